"""The container for saved state, checkpoints and migration streams: named msgpack sections behind
a versioned, checksummed header, written crash-safely and validated completely before use.

What is saved (memory, VP and device state records) is the caller's business; this module only
guarantees that a file is either wholly what a writer committed or rejected with `SavedStateError`.

Layout (all integers little-endian; every digest is BLAKE2b with a 16-byte digest size)::

    header, 64 bytes
      0   8  magic b"HVSIMSAV"
      8   2  format version, u16 (this module writes and reads 1)
     10   2  flags, u16: incompatible features; a reader refuses any bit it does not know (none in 1)
     12  16  kind, ASCII NUL-padded: "saved-state" | "checkpoint" | "migration"
     28   4  section count, u32
     32   4  meta length M, u32
     36  12  reserved, zero
     48  16  header digest = H(bytes 0..48 || meta)
     64   M  meta: one msgpack map (the caller's `meta` dict)

    section, repeated `section count` times, back to back
      0   4  tag b"SECT"
      4   1  name length N (1..64)
      5   1  encoding: 1 = one msgpack object, 2 = a stream of msgpack records
      6   2  reserved, zero
      8   8  payload length L, u64
     16  16  section digest = H(payload || bytes 0..16 || name)
     32   N  name: printable ASCII without spaces, unique in the file ("memory", "devices/storage")
   32+N   L  payload: one msgpack object, or msgpack objects back to back

    trailer, 40 bytes, ending exactly at the end of the file
      0   8  magic b"HVSIMEND"
      8   8  file size, u64, trailer included
     16   4  section count, u32 (again)
     20   4  reserved, zero
     24  16  file digest = H(header digest || each section digest in order || bytes 0..24)

Every byte is covered: the header digest covers the header and meta, each section digest its own
header, name and payload, and the file digest chains those with the trailer, so a reordered,
dropped or spliced section is caught as well as any flipped byte; parsing leaves no gaps, and the
size in the trailer catches truncation at any byte. The file digest doubles as the file's identity
(`SavedStateReader.digest`). The digest in the section header is filled in once the payload has
been written: the writer seeks back, so a large section streams through without ever being held
in memory.

Why BLAKE2b-128 rather than CRC32: the failures to catch are torn writes, truncation and the wrong
file, not the short bursts CRC32 is designed for, and at GiB sizes a 32-bit check lets 1 in 4·10⁹
corruptions through; the digest also names checkpoints, which needs collision resistance. BLAKE2b
is in hashlib everywhere (CRC32C is not in the standard library) and hashes ≈0.8 GiB/s in
software, faster than msgpack encodes pages.

N.B. A digest is integrity, not authenticity: anyone can recompute it. A file from elsewhere is
untrusted input, so the reader also bounds every count and size, and decodes msgpack with limits
and no extension types, before handing anything out.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import msgpack

try:
    import fcntl
except ImportError:      # N.B. not POSIX: no locks, so a stale temporary is any of the target's
    fcntl = None

MAGIC = b"HVSIMSAV"
TRAILER_MAGIC = b"HVSIMEND"
SECTION_TAG = b"SECT"
VERSION = 1
KNOWN_FLAGS = 0                      # no optional features yet in version 1
KINDS = ("saved-state", "checkpoint", "migration")

OBJECT, RECORDS = 1, 2               # section encodings
_ENCODING_NAMES = {OBJECT: "object", RECORDS: "records"}

# Limits a hostile file cannot talk the reader past.
MAX_SECTIONS = 1024
MAX_NAME_BYTES = 64
MAX_META_BYTES = 1 << 20
MAX_OBJECT_BYTES = 16 << 20          # a single-object section is decoded in memory; larger → stream
MAX_RECORD_BYTES = 1 << 20           # one record of a stream (a memory page record is ≈4.1 KB)
MAX_ITEMS = 1 << 20                  # elements of one msgpack array or map
READ_CHUNK = 1 << 20

DIGEST_SIZE = 16
_HEADER = struct.Struct("<8sHH16sII12s16s")
_HEADER_SIGNED = 48                  # bytes of the header the header digest covers (then meta)
_SECTION = struct.Struct("<4sBBHQ16s")
_SECTION_SIGNED = 16
_TRAILER = struct.Struct("<8sQII16s")
_TRAILER_SIGNED = 24
MIN_FILE_SIZE = _HEADER.size + _TRAILER.size


def _hash(*parts: bytes) -> "hashlib._Hash":
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for part in parts:
        h.update(part)
    return h


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not allowed")


def _unpack_options(max_bytes: int) -> dict:
    return dict(raw=False, strict_map_key=True, use_list=True, ext_hook=_refuse_ext, max_ext_len=0,
                max_str_len=max_bytes, max_bin_len=max_bytes, max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS)


_OBJECT_OPTIONS = _unpack_options(MAX_OBJECT_BYTES)
_RECORD_OPTIONS = _unpack_options(MAX_RECORD_BYTES)
# Everything msgpack raises on bad input: FormatError, StackError, ExtraData and limit overruns are
# ValueErrors (UnicodeDecodeError too); BufferFull is an UnpackException.
_DECODE_ERRORS = (ValueError, TypeError, msgpack.UnpackException)


class SavedStateError(ValueError):
    """A saved-state file that is not one, is damaged, or cannot be read by this version."""


def _check_name(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"section name must be a str, got {type(name).__name__}")
    raw = name.encode("ascii", "replace")
    if not name.isascii() or not 1 <= len(raw) <= MAX_NAME_BYTES or not all(0x21 <= b <= 0x7E for b in raw):
        raise ValueError(f"section name {name!r}: expected 1-{MAX_NAME_BYTES} printable ASCII characters "
                         "without spaces")
    return raw


def _encode(obj: Any, what: str, max_bytes: int, options: dict) -> bytes:
    """msgpack bytes for `obj`, refused unless the reader's own limits would accept them: a file
    this module writes is always one it can read back."""
    try:
        data = msgpack.packb(obj, use_bin_type=True, datetime=False)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{what}: cannot be encoded as msgpack: {e}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{what}: {len(data)} bytes encoded, the limit is {max_bytes}")
    try:
        msgpack.unpackb(data, **options)
    except _DECODE_ERRORS as e:
        raise TypeError(f"{what}: would not read back ({e}); map keys must be str or bytes") from None
    return data


class SavedStateWriter:
    """Writes one file: the temporary file `.<name>.<12 hex digits>.tmp` beside the target, then on
    `commit` flush → fsync(temp) → rename over the target → fsync(directory). On `abort` (or an
    exception in the `with` block) the temporary file is removed and an existing target is left as
    it was. Until the header is filled in at commit the temporary file has no magic, so a leftover
    from a crash is never mistaken for a saved state.

    A writer holds an exclusive `flock` on its temporary file until it is renamed or removed. A
    process killed while writing cannot remove its own, so the next writer of the same target
    removes every temporary of that target's name that nobody holds (see `stale_temporaries`).

    `on_step(name)` is called before every I/O step ("write", "patch", "flush", "fsync", "replace",
    "fsync-dir"): tests use it to record their order and to inject a crash at each one.
    """

    def __init__(self, path: str | os.PathLike, kind: str, meta: dict | None = None, *,
                 on_step: Callable[[str], None] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
        meta = {} if meta is None else meta
        if not isinstance(meta, dict):
            raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
        self.path = os.fspath(path)
        self.kind = kind
        self._meta = _encode(meta, "meta", MAX_META_BYTES, _OBJECT_OPTIONS)
        self._on_step = on_step
        self._names: set[str] = set()
        self._digests: list[bytes] = []
        self._stream: RecordStream | None = None
        self._state = "open"                 # open → committed | aborted; "broken" after a failed write
        directory, base = os.path.split(os.path.abspath(self.path))
        self._dir = directory
        for stale in stale_temporaries(self.path):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass         # another writer cleaned it up first
        fd, self._tmp = _create_temporary(directory, base)
        self._file = os.fdopen(fd, "wb")
        self._offset = 0
        try:
            self._write(bytes(_HEADER.size))    # filled in by commit
            self._write(self._meta)
        except BaseException:
            self.abort()
            raise

    # -- sections ---------------------------------------------------------------------------------

    def section(self, name: str, obj: Any) -> None:
        """A section holding one msgpack object (at most MAX_OBJECT_BYTES once encoded)."""
        raw = self._begin(name)
        payload = _encode(obj, f"section {name!r}", MAX_OBJECT_BYTES, _OBJECT_OPTIONS)
        fixed = _SECTION.pack(SECTION_TAG, len(raw), OBJECT, 0, len(payload), bytes(DIGEST_SIZE))
        digest = _hash(payload, fixed[:_SECTION_SIGNED], raw).digest()
        self._write(fixed[:_SECTION_SIGNED] + digest + raw)
        self._write(payload)
        self._add(name, digest)

    def stream(self, name: str) -> "RecordStream":
        """A section written record by record; it ends at the next section, at commit, or when the
        returned stream is closed."""
        raw = self._begin(name)
        at = self._offset
        self._write(bytes(_SECTION.size) + raw)     # length and digest patched in by RecordStream.close
        self._stream = RecordStream(self, name, raw, at)
        return self._stream

    # -- ending -----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Make the file durable under its name. After a failure before the rename the target is
        unchanged; a failing directory fsync (after it) is raised with the new file in place."""
        if self._state == "broken":
            self.abort()
            raise ValueError(f"{self.path}: a write failed earlier; nothing was saved")
        self._check_open()
        try:
            if self._stream is not None:
                self._stream.close()
            count = len(self._digests)
            signed = _HEADER.pack(MAGIC, VERSION, 0, self.kind.encode("ascii"), count, len(self._meta),
                                  bytes(12), bytes(DIGEST_SIZE))[:_HEADER_SIGNED]
            header_digest = _hash(signed, self._meta).digest()
            size = self._offset + _TRAILER.size
            tail = _TRAILER.pack(TRAILER_MAGIC, size, count, 0, bytes(DIGEST_SIZE))[:_TRAILER_SIGNED]
            file_digest = _hash(header_digest, *self._digests, tail).digest()
            self._write(tail + file_digest)
            self._patch(0, signed + header_digest)
            self._step("flush")
            self._file.flush()
            self._step("fsync")
            os.fsync(self._file.fileno())
            self._step("replace")
            os.replace(self._tmp, self.path)    # still open: its lock keeps other writers off it
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._file.close()
        self._step("fsync-dir")
        _fsync_directory(self._dir)

    def abort(self) -> None:
        """Drop the temporary file; the target is untouched. Harmless after commit or abort."""
        if self._state in ("committed", "aborted"):
            return
        self._state = "aborted"
        try:
            self._file.close()
        except OSError:
            pass          # the data is being thrown away
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "SavedStateWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    # -- internals --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"{self.path}: the writer is {self._state}")

    def _begin(self, name: str) -> bytes:
        self._check_open()
        raw = _check_name(name)
        if name in self._names or (self._stream is not None and self._stream.name == name):
            raise ValueError(f"{self.path}: duplicate section {name!r}")
        if len(self._names) + (self._stream is not None) >= MAX_SECTIONS:
            raise ValueError(f"{self.path}: more than {MAX_SECTIONS} sections")
        if self._stream is not None:
            self._stream.close()
        return raw

    def _add(self, name: str, digest: bytes) -> None:
        self._names.add(name)
        self._digests.append(digest)

    def _step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    def _write(self, data: bytes) -> None:
        try:
            self._step("write")
            self._file.write(data)
        except BaseException:
            self._state = "broken"      # a partial write: nothing more may go into this file
            raise
        self._offset += len(data)

    def _patch(self, offset: int, data: bytes) -> None:
        try:
            self._step("patch")
            self._file.seek(offset)
            self._file.write(data)
            self._file.seek(0, os.SEEK_END)
        except BaseException:
            self._state = "broken"
            raise


class RecordStream:
    """The open record-stream section of a `SavedStateWriter`."""

    def __init__(self, writer: SavedStateWriter, name: str, raw_name: bytes, offset: int) -> None:
        self.name = name
        self.records = 0
        self._writer = writer
        self._raw_name = raw_name
        self._offset = offset
        self._length = 0
        self._hash = _hash()
        self._closed = False

    def write_record(self, obj: Any) -> None:
        """Append one msgpack record (at most MAX_RECORD_BYTES encoded)."""
        if self._closed:
            raise ValueError(f"{self._writer.path}: section {self.name!r} is already closed")
        self._writer._check_open()
        data = _encode(obj, f"section {self.name!r} record {self.records}", MAX_RECORD_BYTES, _RECORD_OPTIONS)
        self._writer._write(data)
        self._hash.update(data)
        self._length += len(data)
        self.records += 1

    def close(self) -> None:
        """End the section: fill in its length and digest. Harmless when already closed."""
        if self._closed:
            return
        self._writer._check_open()
        signed = _SECTION.pack(SECTION_TAG, len(self._raw_name), RECORDS, 0, self._length,
                               bytes(DIGEST_SIZE))[:_SECTION_SIGNED]
        self._hash.update(signed)
        self._hash.update(self._raw_name)
        digest = self._hash.digest()
        self._writer._patch(self._offset, signed + digest)
        self._closed = True
        self._writer._stream = None
        self._writer._add(self.name, digest)

    def __enter__(self) -> "RecordStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def _temporary_pattern(base: str) -> "re.Pattern[str]":
    return re.compile(rf"\.{re.escape(base)}\.[0-9a-f]{{12}}\.tmp")


def _create_temporary(directory: str, base: str) -> tuple[int, str]:
    """A new temporary file for target `base` in `directory`, created 0600 (saved state holds
    guest memory) and locked exclusively for as long as it stays open."""
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except FileExistsError:
            continue
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        return fd, tmp


def stale_temporaries(path: str | os.PathLike) -> list[str]:
    """The temporary files a killed writer of `path` left behind: those named like a writer's
    temporary for `path` that no writer holds locked. A live writer's, even in another process, is
    not among them."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    pattern = _temporary_pattern(base)
    try:
        names = [n for n in os.listdir(directory) if pattern.fullmatch(n)]
    except FileNotFoundError:
        return []
    stale = []
    for name in sorted(names):
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue                    # gone already, or not ours to judge
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue            # a writer holds it: in use
            stale.append(full)
        finally:
            os.close(fd)                # drops our lock too
    return stale


def _fsync_directory(directory: str) -> None:
    """Make a rename in `directory` durable (POSIX: fsync on the directory opened read-only)."""
    if os.name != "posix":
        return          # N.B. Windows has no directory fsync; its renames are journaled by NTFS
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SectionInfo:
    name: str
    encoding: str        # "object" | "records"
    offset: int          # of the payload
    length: int          # of the payload
    digest: bytes
    records: int         # msgpack objects in the payload (1 for an object section)


class SavedStateReader:
    """Opens and validates a whole file (structure, every digest, every msgpack object against the
    limits) before anything in it is available. The file stays open, so a rename over it changes
    nothing; `load` and `records` check the section digest again as they read.

    `kind`, when given, is the kind the caller expects. A missing or unreadable file raises the
    OSError; everything wrong with its contents raises SavedStateError.
    """

    def __init__(self, path: str | os.PathLike, *, kind: str | None = None) -> None:
        self.path = os.fspath(path)
        # O_NONBLOCK so that a FIFO (or a device) given as the path is refused by validate()
        # rather than waiting for ever for a writer; regular-file reads ignore the flag.
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            self.validate()
            if kind is not None and self.kind != kind:
                raise self._error(f"is a {self.kind} file, expected a {kind} file")
        except BaseException:
            self.close()
            raise

    # -- public -----------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check everything in the file; fills in `version`, `kind`, `meta`, `digest`, the sections."""
        st = os.fstat(self._require_open())
        if not stat.S_ISREG(st.st_mode):
            raise self._error("is not a regular file")
        size = st.st_size
        self.size = size
        head = self._pread(0, min(size, _HEADER.size))
        if not MAGIC.startswith(head[:8]):
            raise self._error(f"not an hvsim saved-state file (magic {head[:8]!r}, expected {MAGIC!r})")
        if len(head) < _HEADER.size or size < MIN_FILE_SIZE:
            raise self._error(f"truncated at byte {size}: the header and trailer alone take {MIN_FILE_SIZE}")
        magic, version, flags, kind, count, meta_len, reserved, header_digest = _HEADER.unpack(head)
        # The version comes before the header digest: a newer format may lay its header out differently.
        if version != VERSION:
            newer = "newer than" if version > VERSION else "not"
            raise self._error(f"format version {version} is {newer} the version this hvsim reads ({VERSION})")
        if flags & ~KNOWN_FLAGS:
            raise self._error(f"uses format features this hvsim does not know (flags {flags:#06x})")
        if meta_len > MAX_META_BYTES or _HEADER.size + meta_len + _TRAILER.size > size:
            raise self._error(f"meta length {meta_len} does not fit the file ({size} bytes) or the limit "
                              f"({MAX_META_BYTES}): truncated or corrupt header")
        meta_raw = self._pread(_HEADER.size, meta_len)
        if _hash(head[:_HEADER_SIGNED], meta_raw).digest() != header_digest:
            raise self._error("header checksum mismatch")
        # Covered by the digest, so from here on only a hostile writer gets these wrong.
        if reserved != bytes(12):
            raise self._error("reserved header bytes are not zero")
        kind_text = kind.rstrip(b"\0").decode("ascii", "replace")
        if kind_text not in KINDS:
            raise self._error(f"unknown kind {kind_text!r}")
        if count > MAX_SECTIONS:
            raise self._error(f"{count} sections, the limit is {MAX_SECTIONS}")
        meta = self._decode_object(meta_raw, "meta")
        if not isinstance(meta, dict):
            raise self._error(f"meta is a {type(meta).__name__}, expected a map")

        sections: dict[str, SectionInfo] = {}
        offset = _HEADER.size + meta_len
        body_end = size - _TRAILER.size
        for index in range(count):
            info = self._validate_section(index, offset, body_end, sections)
            sections[info.name] = info
            offset = info.offset + info.length
        if offset > body_end:
            raise self._error(f"truncated at byte {size}: the trailer is missing")
        if offset < body_end:
            tail = self._pread(offset, _TRAILER.size)
            if tail[:8] == TRAILER_MAGIC:
                raise self._error(f"trailing garbage: {body_end - offset} bytes after the trailer at byte {offset}")
            raise self._error(f"no trailer at byte {offset} after the last of {count} sections "
                              f"(the file has {body_end - offset} bytes more than the sections account for)")
        trailer = self._pread(body_end, _TRAILER.size)
        t_magic, t_size, t_count, t_reserved, file_digest = _TRAILER.unpack(trailer)
        if t_magic != TRAILER_MAGIC:
            raise self._error(f"bad trailer magic {t_magic!r} at byte {body_end}: truncated or corrupt")
        if t_size != size:
            raise self._error(f"the trailer records {t_size} bytes, the file has {size}: truncated or extended")
        if t_count != count or t_reserved != 0:
            raise self._error(f"the trailer disagrees with the header (sections {t_count} vs {count}, "
                              f"reserved {t_reserved})")
        chained = _hash(header_digest, *(s.digest for s in sections.values()), trailer[:_TRAILER_SIGNED])
        if chained.digest() != file_digest:
            raise self._error("file digest mismatch (sections reordered, replaced or corrupt)")

        self.version = version
        self.kind = kind_text
        self.meta = meta
        self.digest = file_digest.hex()
        self._sections = sections

    def sections(self) -> list[str]:
        """Section names in file order."""
        return list(self._sections)

    def info(self, name: str) -> SectionInfo:
        try:
            return self._sections[name]
        except KeyError:
            raise self._error(f"no section {name!r} (it has: {', '.join(self._sections) or 'none'})") from None

    def __contains__(self, name: str) -> bool:
        return name in self._sections

    def load(self, name: str) -> Any:
        """The object in an object section."""
        info = self.info(name)
        if info.encoding != "object":
            raise self._section_error(info, "is a record stream: read it with records()")
        payload = self._read_payload(info)
        return self._decode_object(payload, f"section {name!r}")

    def records(self, name: str) -> Iterator[Any]:
        """The records of a record-stream section, read and decoded a chunk at a time."""
        info = self.info(name)
        if info.encoding != "records":
            raise self._section_error(info, "holds one object: read it with load()")
        return self._iter_records(info)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "SavedStateReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _error(self, what: str) -> SavedStateError:
        return SavedStateError(f"{self.path}: {what}")

    def _section_error(self, info: SectionInfo | None, what: str, index: int = -1, at: int = -1) -> SavedStateError:
        where = f"section {info.name!r}" if info is not None else f"section #{index} at byte {at}"
        return self._error(f"{where}: {what}")

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: the reader is closed")
        return self._fd

    def _pread(self, offset: int, length: int) -> bytes:
        """Exactly `length` bytes; the callers have already checked them against the file size, so
        a short read means the file shrank under us."""
        fd = self._require_open()
        parts, got = [], 0
        while got < length:
            part = os.pread(fd, min(length - got, READ_CHUNK), offset + got)
            if not part:
                raise self._error(f"truncated at byte {offset + got} while reading (did the file change?)")
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _chunks(self, offset: int, length: int) -> Iterator[bytes]:
        end = offset + length
        while offset < end:
            chunk = self._pread(offset, min(READ_CHUNK, end - offset))
            offset += len(chunk)
            yield chunk

    def _decode_object(self, data: bytes, what: str) -> Any:
        try:
            return msgpack.unpackb(data, **_OBJECT_OPTIONS)
        except _DECODE_ERRORS as e:
            raise self._error(f"{what}: msgpack decode error: {type(e).__name__}: {e}") from None

    def _validate_section(self, index: int, offset: int, body_end: int,
                          seen: dict[str, SectionInfo]) -> SectionInfo:
        if offset + _SECTION.size > body_end:
            raise self._error(f"truncated at byte {self.size}: section #{index} would start at byte {offset}, "
                              f"with {max(0, body_end - offset)} bytes before where the trailer must begin")
        tag, name_len, encoding, reserved, length, digest = _SECTION.unpack(self._pread(offset, _SECTION.size))
        if tag != SECTION_TAG:
            raise self._section_error(None, f"bad section tag {tag!r}", index, offset)
        if not 1 <= name_len <= MAX_NAME_BYTES:
            raise self._section_error(None, f"name length {name_len} outside 1..{MAX_NAME_BYTES}", index, offset)
        payload_at = offset + _SECTION.size + name_len
        if payload_at > body_end:
            raise self._error(f"truncated at byte {self.size}: section #{index} name runs past the end")
        raw = self._pread(offset + _SECTION.size, name_len)
        if not all(0x21 <= b <= 0x7E for b in raw):
            raise self._section_error(None, f"name {raw!r} is not printable ASCII", index, offset)
        name = raw.decode("ascii")
        where = f"section {name!r} (#{index} at byte {offset})"
        if length > body_end - payload_at:
            raise self._error(f"truncated at byte {self.size}: {where} declares {length} payload bytes, "
                              f"only {body_end - payload_at} remain before the trailer")
        if encoding not in _ENCODING_NAMES:
            raise self._error(f"{where}: unknown encoding {encoding}")
        if encoding == OBJECT and length > MAX_OBJECT_BYTES:
            raise self._error(f"{where}: {length} bytes for one object, the limit is {MAX_OBJECT_BYTES}")
        signed = _SECTION.pack(tag, name_len, encoding, reserved, length, digest)[:_SECTION_SIGNED]
        # Hash and decode in one pass; a decode error is reported only if the digest matched, since
        # a mismatch is the better diagnosis of a damaged payload.
        h = _hash()
        decode_error: str | None = None
        if encoding == OBJECT:
            payload = self._pread(payload_at, length)
            h.update(payload)
            try:
                msgpack.unpackb(payload, **_OBJECT_OPTIONS)
            except _DECODE_ERRORS as e:
                decode_error = f"{type(e).__name__}: {e}"
            records = 1
        else:
            unpacker = self._record_unpacker()
            records = end = 0
            for chunk in self._chunks(payload_at, length):
                h.update(chunk)
                if decode_error is None:
                    try:
                        unpacker.feed(chunk)
                        for _ in unpacker:
                            records += 1
                            end = unpacker.tell()   # tell() alone also counts a partial record's start
                    except _DECODE_ERRORS as e:
                        decode_error = f"record {records}: {type(e).__name__}: {e}"
            if decode_error is None and end != length:
                decode_error = f"record {records}: cut short at the end of the section"
        h.update(signed)
        h.update(raw)
        if h.digest() != digest:
            raise self._error(f"checksum mismatch in {where}")
        if decode_error is not None:
            raise self._error(f"{where}: msgpack decode error: {decode_error}")
        # Checked after the digest: only a file crafted with valid digests gets here.
        if reserved != 0:
            raise self._error(f"{where}: reserved bytes are not zero")
        if name in seen:
            raise self._error(f"duplicate section {name!r} (#{index} at byte {offset})")
        return SectionInfo(name, _ENCODING_NAMES[encoding], payload_at, length, digest, records)

    @staticmethod
    def _record_unpacker() -> msgpack.Unpacker:
        # The buffer holds at most one partial record plus one chunk.
        return msgpack.Unpacker(max_buffer_size=MAX_RECORD_BYTES + READ_CHUNK, **_RECORD_OPTIONS)

    def _signed_section(self, info: SectionInfo, encoding: int) -> bytes:
        raw = info.name.encode("ascii")
        return _SECTION.pack(SECTION_TAG, len(raw), encoding, 0, info.length, info.digest)[:_SECTION_SIGNED] + raw

    def _read_payload(self, info: SectionInfo) -> bytes:
        payload = self._pread(info.offset, info.length)
        if _hash(payload, self._signed_section(info, OBJECT)).digest() != info.digest:
            raise self._section_error(info, "checksum mismatch (the file changed after it was validated)")
        return payload

    def _iter_records(self, info: SectionInfo) -> Iterator[Any]:
        unpacker = self._record_unpacker()
        h = _hash()
        end = 0
        for chunk in self._chunks(info.offset, info.length):
            h.update(chunk)
            try:
                unpacker.feed(chunk)
                batch = list(unpacker)      # at most one chunk's worth of records
                end = unpacker.tell() if batch else end
            except _DECODE_ERRORS as e:
                raise self._section_error(info, f"msgpack decode error (the file changed after it was "
                                                f"validated?): {e}") from None
            yield from batch
        h.update(self._signed_section(info, RECORDS))
        if h.digest() != info.digest or end != info.length:
            raise self._section_error(info, "checksum mismatch (the file changed after it was validated)")
