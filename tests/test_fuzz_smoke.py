"""The fuzz targets' smoke run (`make fuzz` is the real one): every harness over its whole seed
corpus, the Python ones directly (no atheris needed), the C ones built with gcc under ASan and
UBSan with a plain main() instead of libFuzzer; and the corpus and dictionaries are where
`make fuzz` looks for them and hold what the parsers accept."""
import os
import subprocess
from pathlib import Path

import pytest

from fuzz import targets
from fuzz.run import ALL, C_TARGETS, PY_TARGETS, core_flags, support_sources

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


def _script_records(data):
    """The records of a hypercall script (fuzz/c/hypercall.c's format), each checked whole: the
    harness silently stops at a cut record, so a cut seed would fuzz from nearly nothing."""
    records, at = [], 0
    while at < len(data):
        op = data[at] % 4
        if op in (0, 1):
            assert at + 11 <= len(data), f"call record cut at {at}"
            control, qwords = int.from_bytes(data[at + 2:at + 10], "little"), data[at + 10]
            size = 11 + qwords % 128 * 8
            records.append(("call", control & 0xFFFF))
        elif op == 2:
            assert at + 6 <= len(data), f"store record cut at {at}"
            size = 6 + data[at + 5]
            records.append(("store", data[at + 2]))
        else:
            size = 5
            records.append(("run", 0))
        assert at + size <= len(data), f"record at {at} needs {size} bytes"
        at += size
    return records


def test_hypercall_seeds_are_whole_scripts_of_calls():
    from hypervisor.abi import CallCode
    codes = set()
    for path in seeds("hypercall"):
        records = _script_records(path.read_bytes())
        assert records, path.name
        codes |= {code for kind, code in records if kind == "call"}
    assert codes <= set(CallCode)
    assert CallCode.MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY in codes


def test_the_control_harness_reports_a_server_that_tears_down_what_it_never_created():
    notifier = targets._Notifier(b"\1")
    with pytest.raises(targets.Finding, match="never created"):
        notifier.teardown_gpadl(1, 0x100)


def _build_c(target, out):
    """A C harness built with gcc under ASan and UBSan, with fuzz/c/replay.c's main() (each file
    named on its command line is one input, all in one process)."""
    harness, sources = C_TARGETS[target]
    flags = ["-std=c11", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
             "-fno-sanitize-recover=undefined", f"-I{FUZZ.parent / 'native'}"]
    objects = []
    for src in [*sources, harness, *support_sources(target), FUZZ / "c" / "replay.c"]:
        obj = out.parent / f"{target}-{src.parent.name}-{src.stem}.o"
        core = src in sources
        subprocess.run(["gcc", *flags, *(core_flags(target) if core else []), "-c", str(src), "-o", str(obj)],
                       check=True, capture_output=True)
        objects.append(str(obj))
    subprocess.run(["gcc", *flags, *objects, "-o", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def c_harness(tmp_path_factory):
    built = {}

    def get(target):
        if target not in built:
            built[target] = _build_c(target, tmp_path_factory.mktemp("fuzz") / target)
        return built[target]
    return get


def _run(exe, inputs, **extra_env):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1",
           **extra_env}
    env.pop("LD_PRELOAD", None)
    done = subprocess.run([str(exe), *map(str, inputs)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"ran {len(inputs)} inputs" in done.stdout
    return done.stdout


@pytest.mark.parametrize("target", list(C_TARGETS))
def test_c_harness_runs_its_seed_corpus_under_sanitizers(target, c_harness):
    _run(c_harness(target), seeds(target))


def test_hypercall_harness_fresh_mode_runs_its_seed_corpus_with_leak_checks(c_harness):
    # a new host with libc's heap per input, destroyed after it: LeakSanitizer checks the teardown
    _run(c_harness("hypercall"), seeds("hypercall"), HVSIM_FUZZ_FRESH="1")


def _outcomes(stdout):
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("outcome ")]


def test_persistent_hypercall_harness_gives_an_input_the_same_outcome_alone_and_after_others(c_harness):
    # The persistent mode builds the host once and puts it back after every input: an input's
    # results and final state (memory and time included) must not depend on what ran before it.
    # Twice through every seed: the first pass deletes the child, makes ports, posts messages,
    # lets time pass..., so state left behind by any of them would change the second pass.
    exe = c_harness("hypercall")
    corpus = seeds("hypercall")
    alone = [_outcomes(_run(exe, [path], HVSIM_FUZZ_OUTCOME="1"))[0] for path in corpus]
    assert len(set(alone)) > 1  # the seeds do different things
    together = _outcomes(_run(exe, corpus + corpus, HVSIM_FUZZ_OUTCOME="1"))
    assert together == alone + alone
    # and a new host per input (libc's heap, no snapshot) gives the same outcomes
    assert _outcomes(_run(exe, corpus, HVSIM_FUZZ_OUTCOME="1", HVSIM_FUZZ_FRESH="1")) == alone
