"""The fuzz targets' smoke run (`make fuzz` is the real one): every harness over its whole seed
corpus, the Python ones directly (no atheris needed), the C ones built with gcc under ASan and
UBSan with a plain main() instead of libFuzzer; and the corpus and dictionaries are where
`make fuzz` looks for them and hold what the parsers accept."""
import os
import subprocess
from pathlib import Path

import pytest

from fuzz import targets
from fuzz.run import ALL, C_TARGETS, PY_TARGETS

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"


def seeds(target):
    return sorted((FUZZ / "corpus" / target).iterdir())


def test_every_target_has_a_harness_a_seed_corpus_and_a_dictionary():
    assert set(PY_TARGETS) == set(targets.TARGETS)
    for target in ALL:
        assert seeds(target), target
        entries = [line for line in (FUZZ / "dict" / f"{target}.dict").read_text().splitlines()
                   if line and not line.startswith("#")]
        assert entries and all("=\"" in e for e in entries), target


@pytest.mark.parametrize("target", PY_TARGETS)
def test_python_harness_runs_its_seed_corpus(target):
    for path in seeds(target):
        targets.TARGETS[target](path.read_bytes())   # raises on a finding


# What each parser must accept among the seeds: a corpus of rejects would fuzz only the first check.
def _accepts_ic(data):
    targets.framing.decode(data)


def _accepts_vstor(data):
    targets.stor.decode_packet(data)


def _accepts_rndis(data):
    targets.net.decode_rndis(data)


def _accepts_control(data):
    n, at = 0, 4
    while at + 2 <= len(data):
        size = data[at]
        targets.vp.decode(data[at + 2:at + 2 + size])
        at += 2 + size
        n += 1
    assert n


def _accepts_vhd(data):
    targets.VirtualDisk.open(targets._image("seed.vhd", data), read_only=True).close()


def _accepts_savedstate(data):
    targets.SavedStateReader(targets._image("seed.hvsav", data)).close()


def _accepts_config(data):
    targets.config.loads(data.decode(), base_dir=targets._scratch)


def _accepts_ring(data):
    ring, _, max_packets, _ = targets.ring_from(data)
    packets, _ = targets.IncomingRing(ring).read_batch(max_packets)
    assert packets


@pytest.mark.parametrize("target, accepts", [
    ("ic", _accepts_ic), ("vstor", _accepts_vstor), ("rndis", _accepts_rndis),
    ("vmbus_control", _accepts_control), ("vhd", _accepts_vhd), ("savedstate", _accepts_savedstate),
    ("config", _accepts_config), ("ring_py", _accepts_ring)])
def test_seeds_are_inputs_the_parser_accepts(target, accepts):
    for path in seeds(target):
        if target == "vstor" and path.name.startswith("gpa_direct"):
            continue  # a GPA-direct range list first: the other parser's seed
        accepts(path.read_bytes())


def test_the_control_harness_reports_a_server_that_tears_down_what_it_never_created():
    notifier = targets._Notifier(b"\1")
    with pytest.raises(targets.Finding, match="never created"):
        notifier.teardown_gpadl(1, 0x100)


@pytest.mark.parametrize("target", list(C_TARGETS))
def test_c_harness_runs_its_seed_corpus_under_sanitizers(target, tmp_path):
    harness, sources = C_TARGETS[target]
    exe = tmp_path / target
    flags = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined"]
    subprocess.run(["gcc", *flags, f"-I{FUZZ.parent / 'native'}", *map(str, sources), str(harness),
                    str(FUZZ / "c" / "replay.c"), "-o", str(exe)], check=True, capture_output=True)
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1"}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([str(exe), *map(str, seeds(target))], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ran {len(seeds(target))} inputs" in done.stdout
