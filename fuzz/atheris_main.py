"""Runs one Python fuzz target under atheris: `python -m fuzz.atheris_main <target> [libFuzzer args]`
(fuzz/run.py starts one such process per target; atheris can fuzz only once per process)."""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["vmbus", "drivers", "partitions", "hypervisor", "fuzz"]):
    from fuzz import targets


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in targets.TARGETS:
        raise SystemExit(f"usage: python -m fuzz.atheris_main TARGET [libFuzzer args]; "
                         f"targets: {', '.join(targets.TARGETS)}")
    harness = targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], harness)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
