"""The saved-state container: round trips, crash safety at every I/O step, damaged and hostile files."""
import hashlib
import os
import stat
import struct
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partitions import savedstate
from partitions.savedstate import SavedStateError, SavedStateReader, SavedStateWriter

PAGE = 4096
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def page(gpa: int) -> bytes:
    return bytes((gpa * 7 + i) % 251 + 1 for i in range(16)) * (PAGE // 16)


def write_sample(path, *, pages: int = 8, tag: str = "new", on_step=None) -> None:
    """A checkpoint with object sections around a memory stream of `pages` (gpa, page) records."""
    with SavedStateWriter(path, "checkpoint", {"vm": "web", "parent": "cp-1", "tag": tag}, on_step=on_step) as w:
        w.section("partition", {"name": "web", "memory": pages * PAGE, "tag": tag})
        memory = w.stream("memory")
        for gpa in range(pages):
            memory.write_record([gpa * 3, page(gpa)])
        w.section("vps", [{"index": 0, "rip": 0x1000, "regs": list(range(16))}, {"index": 1, "rip": 0x2000}])
        w.section("devices/storage", {"luns": [{"path": "web.vhd", "queue": []}]})


def leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))


# -- an independent encoder of the layout in savedstate's docstring, to craft files ----------------

def blake(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part)
    return h.digest()


def craft(sections, *, kind=b"checkpoint", meta=b"\x80", version=1, flags=0, count=None,
          size_skew=0, trailer_count=None) -> bytes:
    """A file with correct digests around whatever `sections` [(name, encoding, payload)] hold."""
    count = len(sections) if count is None else count
    trailer_count = count if trailer_count is None else trailer_count
    head = struct.pack("<8sHH16sII12s", b"HVSIMSAV", version, flags, kind, count, len(meta), bytes(12))
    header_digest = blake(head, meta)
    out, digests = [head, header_digest, meta], []
    for name, encoding, payload in sections:
        fixed = struct.pack("<4sBBHQ", b"SECT", len(name), encoding, 0, len(payload))
        digests.append(blake(payload, fixed, name))
        out += [fixed, digests[-1], name, payload]
    tail = struct.pack("<8sQII", b"HVSIMEND", sum(map(len, out)) + 40 + size_skew, trailer_count, 0)
    return b"".join(out + [tail, blake(header_digest, *digests, tail)])


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "vm.sav"
    write_sample(path)
    return path, path.read_bytes()


def read_all(path) -> dict:
    with SavedStateReader(path) as r:
        return {"kind": r.kind, "meta": r.meta, "digest": r.digest,
                **{name: (list(r.records(name)) if r.info(name).encoding == "records" else r.load(name))
                   for name in r.sections()}}


# -- round trips ------------------------------------------------------------------------------------

def test_round_trip_of_object_and_streamed_sections(tmp_path):
    path = tmp_path / "vm.sav"
    write_sample(path, pages=5000)
    assert leftovers(tmp_path) == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600          # guest memory is private
    with SavedStateReader(path, kind="checkpoint") as r:
        assert (r.version, r.kind) == (1, "checkpoint")
        assert r.meta == {"vm": "web", "parent": "cp-1", "tag": "new"}
        assert r.sections() == ["partition", "memory", "vps", "devices/storage"]
        assert r.load("partition") == {"name": "web", "memory": 5000 * PAGE, "tag": "new"}
        assert r.load("vps")[0] == {"index": 0, "rip": 0x1000, "regs": list(range(16))}
        assert r.load("devices/storage") == {"luns": [{"path": "web.vhd", "queue": []}]}
        assert r.info("memory").records == 5000
        count = 0
        for expected_gpa, (gpa, data) in enumerate(r.records("memory")):
            assert gpa == expected_gpa * 3 and data == page(expected_gpa)
            count += 1
        assert count == 5000
        digest = r.digest
    # The same content gives the same bytes: the digest can name a checkpoint.
    write_sample(tmp_path / "again.sav", pages=5000)
    assert (tmp_path / "again.sav").read_bytes() == path.read_bytes()
    assert read_all(tmp_path / "again.sav")["digest"] == digest


def test_the_writer_follows_the_documented_layout(sample):
    path, data = sample
    with SavedStateReader(path) as r:
        meta = msgpack.packb(r.meta)
        sections = []
        for name in r.sections():
            info = r.info(name)
            sections.append((name.encode(), 1 if info.encoding == "object" else 2,
                             data[info.offset:info.offset + info.length]))
    assert craft(sections, meta=meta) == data


def test_empty_stream_and_empty_meta(tmp_path):
    path = tmp_path / "m.sav"
    with SavedStateWriter(path, "migration") as w:
        w.stream("memory").close()
    with SavedStateReader(path) as r:
        assert (r.kind, r.meta, r.sections(), list(r.records("memory"))) == ("migration", {}, ["memory"], [])


def test_streaming_does_not_hold_the_file_in_memory(tmp_path):
    path = tmp_path / "big.sav"
    tracemalloc.start()
    try:
        write_sample(path, pages=5000)                   # 20 MB of pages
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with SavedStateReader(path) as r:
            assert sum(1 for _ in r.records("memory")) == 5000
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.path.getsize(path) > 5000 * PAGE
    assert write_peak < 4 * 2**20 and read_peak < 8 * 2**20, (write_peak, read_peak)


# -- crash safety -----------------------------------------------------------------------------------

class Crash(Exception):
    pass


def steps_of_a_write(tmp_path) -> list[str]:
    steps: list[str] = []
    write_sample(tmp_path / "trace.sav", on_step=steps.append)
    os.unlink(tmp_path / "trace.sav")
    return steps


def test_io_steps_follow_temp_fsync_rename_dirsync(tmp_path):
    steps = steps_of_a_write(tmp_path)
    assert steps[-4:] == ["flush", "fsync", "replace", "fsync-dir"]
    assert set(steps[:-4]) == {"write", "patch"}
    assert steps[-5] == "patch"          # the header goes in last, just before the flush


@pytest.mark.parametrize("old_file", [True, False], ids=["over-old-file", "new-file"])
def test_a_crash_at_any_step_leaves_the_old_or_the_new_file(tmp_path, old_file):
    target = tmp_path / "vm.sav"
    old = new = None
    if old_file:
        write_sample(target, tag="old")
        old = target.read_bytes()
    steps = steps_of_a_write(tmp_path)
    write_sample(tmp_path / "new.sav")
    new = (tmp_path / "new.sav").read_bytes()
    os.unlink(tmp_path / "new.sav")
    for crash_at in range(len(steps)):
        seen = []

        def on_step(step, count=[0]):
            if count[0] == crash_at:
                # What a kill at this point leaves on disk: the target is whole, the old or the new.
                seen.append(target.read_bytes() if target.exists() else None)
                raise Crash(step)
            count[0] += 1

        with pytest.raises(Crash):
            write_sample(target, on_step=on_step)
        after_rename = steps[crash_at] == "fsync-dir"
        assert seen == [new if after_rename else old], (crash_at, steps[crash_at])
        assert (target.read_bytes() if target.exists() else None) == (new if after_rename else old)
        assert leftovers(tmp_path) == [], (crash_at, steps[crash_at])
        if target.exists():
            read_all(target)


def test_real_fsyncs_cover_the_file_then_the_directory(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st_ = os.fstat(fd)
        events.append(("fsync-dir" if stat.S_ISDIR(st_.st_mode) else "fsync-file", st_.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_sample(tmp_path / "vm.sav")
    ino = os.stat(tmp_path / "vm.sav").st_ino
    assert events == [("fsync-file", ino), ("replace", ino), ("fsync-dir", os.stat(tmp_path).st_ino)]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failing_syscall_keeps_the_old_file_and_removes_the_temp(sample, monkeypatch, failing):
    path, old = sample

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="No space"):
        write_sample(path, tag="newer")
    assert path.read_bytes() == old and leftovers(path.parent) == []


def test_an_exception_in_the_with_block_aborts(sample):
    path, old = sample
    with pytest.raises(RuntimeError, match="guest died"):
        with SavedStateWriter(path, "checkpoint", {}) as w:
            stream = w.stream("memory")
            stream.write_record([0, page(0)])
            raise RuntimeError("guest died")
    assert path.read_bytes() == old and leftovers(path.parent) == []


def test_a_failed_write_caught_by_the_caller_still_saves_nothing(sample):
    path, old = sample
    calls = []

    def on_step(step):
        calls.append(step)
        if len(calls) == 4:
            raise OSError(5, "I/O error")

    failures = []
    with pytest.raises(ValueError, match="a write failed earlier"):
        with SavedStateWriter(path, "checkpoint", {}, on_step=on_step) as w:
            stream = w.stream("memory")
            for gpa in range(3):
                try:
                    stream.write_record([gpa, page(gpa)])
                except (OSError, ValueError) as e:         # a careless caller swallows them
                    failures.append(str(e))
    assert failures[0] == "[Errno 5] I/O error" and failures[1].endswith("the writer is broken")
    assert path.read_bytes() == old and leftovers(path.parent) == []


# -- damaged files ----------------------------------------------------------------------------------

@pytest.fixture
def small(tmp_path):
    """A sample small enough to damage at every byte (rewriting files is slow on some file systems,
    so the tests below change the file in place)."""
    path = tmp_path / "small.sav"
    write_sample(path, pages=2)
    return path, path.read_bytes()


def test_every_truncation_is_detected(small):
    path, data = small
    with open(path, "r+b") as f:
        for size in range(len(data) - 1, -1, -1):
            f.truncate(size)
            with pytest.raises(SavedStateError, match="truncated") as e:
                SavedStateReader(path)
            assert str(e.value).startswith(f"{path}: ")


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=4))
def test_flipped_bytes_are_always_detected(sample, tmp_path, flips):
    _, data = sample
    damaged = bytearray(data)
    for position, mask in flips:
        damaged[position % len(data)] ^= mask
    if bytes(damaged) == data:
        return                                           # two flips cancelled out
    bad = tmp_path / "bad.sav"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(SavedStateError):
        SavedStateReader(bad)


def test_every_single_byte_corruption_is_detected(small):
    path, data = small
    fd = os.open(path, os.O_RDWR)
    try:
        for position in range(len(data)):
            os.pwrite(fd, bytes([data[position] ^ (0x01 if position % 2 else 0x80)]), position)
            with pytest.raises(SavedStateError):
                SavedStateReader(path)
            os.pwrite(fd, data[position:position + 1], position)
    finally:
        os.close(fd)


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=200))
def test_appended_bytes_are_trailing_garbage(sample, tmp_path, garbage):
    _, data = sample
    bad = tmp_path / "bad.sav"
    bad.write_bytes(data + garbage)
    with pytest.raises(SavedStateError, match=f"trailing garbage: {len(garbage)} bytes"):
        SavedStateReader(bad)


def test_errors_name_the_file_the_section_and_the_problem(sample):
    path, data = sample
    with SavedStateReader(path) as r:
        vps = r.info("vps")
    damaged = bytearray(data)
    damaged[vps.offset + 3] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(SavedStateError, match=r"checksum mismatch in section 'vps' \(#2 at byte \d+\)") as e:
        SavedStateReader(path)
    assert str(e.value).startswith(f"{path}: ")


def test_other_files_are_not_saved_state(tmp_path):
    for name, content in [("disk.vhd", b"conectix" + bytes(504)), ("img.png", b"\x89PNG\r\n\x1a\n" + bytes(200)),
                          ("text.sav", b"HVSIM is a simulator\n" * 10)]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SavedStateError, match="not an hvsim saved-state file"):
            SavedStateReader(tmp_path / name)
    (tmp_path / "empty.sav").write_bytes(b"")
    with pytest.raises(SavedStateError, match="truncated at byte 0"):
        SavedStateReader(tmp_path / "empty.sav")
    with pytest.raises(SavedStateError, match="not a regular file"):
        SavedStateReader(tmp_path)


def test_a_newer_format_version_is_refused_by_name(tmp_path):
    path = tmp_path / "future.sav"
    path.write_bytes(craft([(b"vps", 1, msgpack.packb([]))], version=2))
    with pytest.raises(SavedStateError, match=r"format version 2 is newer than the version this hvsim reads \(1\)"):
        SavedStateReader(path)
    path.write_bytes(craft([], flags=0x0004))
    with pytest.raises(SavedStateError, match="features this hvsim does not know"):
        SavedStateReader(path)


# -- hostile files (digests valid, contents not) -----------------------------------------------------

@pytest.mark.parametrize("sections, kwargs, message", [
    ([(b"vps", 1, b"\x90")] * 2, {}, "duplicate section 'vps'"),
    ([(b"vps", 1, b"\x90")], {"size_skew": 4096}, "the trailer records 4237 bytes, the file has 141"),
    ([(b"vps", 1, b"\x90")], {"trailer_count": 2}, "the trailer disagrees with the header"),
    ([], {"count": 10**6}, "sections, the limit is 1024"),
    ([], {"kind": b"snapshot"}, "unknown kind 'snapshot'"),
    ([], {"meta": b"\x91\x01"}, "meta is a list, expected a map"),
    ([(b"x" * 65, 1, b"\xc0")], {}, "name length 65"),
    ([(b"two words", 1, b"\xc0")], {}, "not printable ASCII"),
    ([(b"vps", 3, b"\xc0")], {}, "unknown encoding 3"),
    ([(b"vps", 1, b"")], {}, "section 'vps'.*msgpack decode error"),
    ([(b"vps", 1, b"\xc0\xc0")], {}, "msgpack decode error: ExtraData"),
    ([(b"vps", 1, msgpack.packb({1: 2}))], {}, "not allowed for map key"),
    ([(b"vps", 1, msgpack.packb(msgpack.ExtType(7, b"x")))], {}, "max_ext_len"),
    ([(b"vps", 1, b"\x91" * 5000 + b"\xc0")], {}, "StackError"),
    ([(b"memory", 2, b"\x92\x01")], {}, "record 0: cut short"),
    ([(b"memory", 2, msgpack.packb([0, bytes(savedstate.MAX_RECORD_BYTES + 1)]))], {}, "exceeds max_bin_len"),
], ids=["duplicate", "trailer-size", "trailer-count", "section-count", "kind", "meta-type", "name-length",
        "name-chars", "encoding", "empty-object", "two-objects", "int-key", "ext-type", "deep-nesting", "cut-record",
        "huge-record"])
def test_hostile_files_are_refused(tmp_path, sections, kwargs, message):
    path = tmp_path / "hostile.sav"
    path.write_bytes(craft(sections, **kwargs))
    with pytest.raises(SavedStateError, match=message):
        SavedStateReader(path)


def test_sections_spliced_from_valid_parts_fail_the_file_digest(tmp_path):
    a, b = (b"vps", 1, msgpack.packb([1])), (b"partition", 1, msgpack.packb({"n": 2}))
    good = craft([a, b])
    swapped = craft([b, a])
    head = 64 + 1                                        # header and the empty meta map
    # Sections of the good file in swapped order under its header and trailer: each section still
    # matches its own digest; only the chained file digest notices.
    spliced = good[:head] + swapped[head:-40] + good[-40:]
    assert len(spliced) == len(good) and spliced != good
    path = tmp_path / "spliced.sav"
    path.write_bytes(spliced)
    with pytest.raises(SavedStateError, match="file digest mismatch"):
        SavedStateReader(path)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12)


@FUZZ
@given(object_payload=st.binary(max_size=64) | msgpack_values.map(msgpack.packb),
       record_payload=st.binary(max_size=64) | st.lists(msgpack_values, max_size=4).map(
           lambda records: b"".join(map(msgpack.packb, records))))
def test_arbitrary_payloads_with_valid_digests_read_or_are_refused(tmp_path, object_payload, record_payload):
    path = tmp_path / "fuzz.sav"
    path.write_bytes(craft([(b"state", 1, object_payload), (b"memory", 2, record_payload)]))
    try:
        with SavedStateReader(path) as r:
            loaded, records = r.load("state"), list(r.records("memory"))
    except SavedStateError:
        return
    # What was accepted is exactly what msgpack itself decodes (compared re-encoded: NaN != NaN).
    assert msgpack.packb(loaded) == msgpack.packb(msgpack.unpackb(object_payload))
    plain = msgpack.Unpacker()
    plain.feed(record_payload)
    assert msgpack.packb(records) == msgpack.packb(list(plain))
    assert len(records) == r.info("memory").records


def test_a_file_changed_after_validation_is_caught_on_read(sample):
    path, data = sample
    with SavedStateReader(path) as r:
        memory, vps = r.info("memory"), r.info("vps")
        with open(path, "r+b") as f:
            f.seek(memory.offset + memory.length - 1)
            f.write(b"\x00")
            f.seek(vps.offset + 1)
            f.write(b"\x00")
        with pytest.raises(SavedStateError, match="section 'vps': checksum mismatch"):
            r.load("vps")
        with pytest.raises(SavedStateError, match="section 'memory': checksum mismatch"):
            list(r.records("memory"))


# -- misuse -----------------------------------------------------------------------------------------

def test_reader_misuse_gets_clear_errors(sample):
    path, _ = sample
    with pytest.raises(SavedStateError, match="is a checkpoint file, expected a saved-state file"):
        SavedStateReader(path, kind="saved-state")
    with SavedStateReader(path) as r:
        with pytest.raises(SavedStateError, match="record stream: read it with records"):
            r.load("memory")
        with pytest.raises(SavedStateError, match="holds one object: read it with load"):
            r.records("vps")
        with pytest.raises(SavedStateError, match="no section 'gpu'"):
            r.load("gpu")


def test_writer_refuses_what_the_reader_would_refuse(tmp_path):
    path = tmp_path / "vm.sav"
    with pytest.raises(ValueError, match="kind 'snapshot'"):
        SavedStateWriter(path, "snapshot", {})
    with pytest.raises(TypeError, match="meta: would not read back"):
        SavedStateWriter(path, "checkpoint", {1: "int keys"})
    with SavedStateWriter(path, "checkpoint", {}) as w:
        for name in ["", "two words", "x" * 65, "émoji"]:
            with pytest.raises(ValueError, match="section name"):
                w.section(name, 1)
        with pytest.raises(TypeError, match="section 'vps': cannot be encoded"):
            w.section("vps", {1, 2})
        with pytest.raises(TypeError, match="would not read back"):
            w.section("vps", {"pages": {0: b"x"}})
        with pytest.raises(TypeError, match="would not read back"):
            w.section("vps", msgpack.ExtType(1, b"x"))
        w.section("vps", [])
        with pytest.raises(ValueError, match="duplicate section 'vps'"):
            w.section("vps", [])
        stream = w.stream("memory")
        with pytest.raises(ValueError, match="record 0: .* the limit is"):
            stream.write_record(bytes(savedstate.MAX_RECORD_BYTES))
        stream.write_record([0, page(0)])
        w.section("after", 1)                                # ends the stream
        with pytest.raises(ValueError, match="section 'memory' is already closed"):
            stream.write_record([1, page(1)])
    assert read_all(path)["memory"] == [[0, page(0)]]
    assert leftovers(tmp_path) == []


# -- files that are not regular, and temporaries a killed writer left ------------------------------


def test_a_fifo_is_refused_as_not_a_regular_file_without_waiting_for_a_writer(tmp_path, no_hang):
    fifo = tmp_path / "vm.hvsav"
    os.mkfifo(fifo)
    with pytest.raises(SavedStateError, match=r"vm.hvsav: is not a regular file"):
        SavedStateReader(fifo)
    with pytest.raises(SavedStateError, match="is not a regular file"):
        SavedStateReader(tmp_path)                      # a directory likewise


KILLED_WRITER = r'''
import os, signal, sys
from partitions.savedstate import SavedStateWriter
w = SavedStateWriter(sys.argv[1], "saved-state", {"vm": "web"})
w.section("vps", [1, 2, 3])
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_the_next_write_removes_what_a_killed_writer_of_the_same_target_left(tmp_path):
    import subprocess
    import sys
    target = tmp_path / "vm.hvsav"
    out = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], capture_output=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))), timeout=60)
    assert out.returncode == -9, out.stderr
    (left,) = leftovers(tmp_path)
    assert left.startswith(".vm.hvsav.") and not target.exists()
    # Not this target's: other targets' temporaries and names a writer would not have made.
    others = [".other.hvsav.0123456789ab.tmp", ".vm.hvsav.notours.tmp", ".vm.hvsav.0123456789ab.tmp.keep"]
    for name in others:
        (tmp_path / name).write_bytes(b"x")
    assert savedstate.stale_temporaries(target) == [str(tmp_path / left)]
    write_sample(target, tag="next")
    assert read_all(target)["partition"]["tag"] == "next"
    assert sorted(os.listdir(tmp_path)) == sorted(others + ["vm.hvsav"])


def test_a_live_writers_temporary_is_not_stale(tmp_path):
    target = tmp_path / "vm.hvsav"
    first = SavedStateWriter(target, "saved-state", {"n": 1})
    first.section("vps", [1])
    assert savedstate.stale_temporaries(target) == []
    with SavedStateWriter(target, "saved-state", {"n": 2}) as second:   # does not remove first's
        second.section("vps", [2])
    assert len(leftovers(tmp_path)) == 1
    first.commit()
    assert leftovers(tmp_path) == []
    with SavedStateReader(target) as r:
        assert r.meta == {"n": 1} and r.load("vps") == [1]
