"""Fixtures for the storage tests: the qemu tools that cross-check VHD files."""
from __future__ import annotations

import json
import shutil
import os
import subprocess
from pathlib import Path

import pytest


class Qemu:
    """qemu-img and qemu-io, run on VHD ("vpc") files; every call checks the exit status."""

    def __init__(self, qemu_img: str, qemu_io: str) -> None:
        self.qemu_img = qemu_img
        self.qemu_io_path = qemu_io

    def run(self, *argv: str) -> str:
        # Under `make sanitize` the sanitizer runtimes are preloaded into Python; qemu must not
        # inherit them.
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
        return proc.stdout

    def info(self, path: Path) -> dict:
        return json.loads(self.run(self.qemu_img, "info", "--output=json", "-f", "vpc", str(path)))

    def create(self, path: Path, size: int, subformat: str, *options: str) -> None:
        opts = ",".join((f"subformat={subformat}", *options))
        self.run(self.qemu_img, "create", "-q", "-f", "vpc", "-o", opts, str(path), str(size))

    def to_raw(self, path: Path, raw: Path) -> bytes:
        self.run(self.qemu_img, "convert", "-f", "vpc", "-O", "raw", str(path), str(raw))
        return raw.read_bytes()

    def io(self, path: Path, *commands: str) -> str:
        """Run qemu-io commands; fails the test if any reports a mismatch or an error."""
        argv = [self.qemu_io_path, "-f", "vpc"]
        for command in commands:
            argv += ["-c", command]
        out = self.run(*argv, str(path))
        # qemu-io exits 0 even when a "read -P" pattern check fails; it says so on stdout.
        bad = [line for line in out.splitlines() if "mismatch" in line.lower() or "error" in line.lower()
               or "failed" in line.lower()]
        assert not bad, f"qemu-io on {path}: {bad}\n{out}"
        return out


@pytest.fixture(scope="session")
def qemu() -> Qemu:
    """The qemu tools. Missing tools fail the test (never skip): interoperability is required."""
    found = {name: shutil.which(name) for name in ("qemu-img", "qemu-io")}
    missing = [name for name, where in found.items() if where is None]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: run `tools/ensure-debian-packages "
                    "qemu-img:qemu-utils` (as root) to install qemu-utils", pytrace=False)
    return Qemu(found["qemu-img"], found["qemu-io"])
