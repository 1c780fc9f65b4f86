"""VHD virtual disk files (fixed, dynamic, differencing): create, open, read, write, inspect.

`VirtualDisk` is the backing store of the synthetic SCSI disks. Byte layouts are in
`drivers.storage.vhd_format`, file layout and the checks on opening in `drivers.storage.vhd_layout`;
this module does the I/O and decides the order of updates.

Durability is a disk's volatile write cache: `write` reaches the file system at once (pwrite; a
read sees it at once), but is made durable only by `flush` (the guest's SYNCHRONIZE CACHE and
FUA writes; checkpoints, saves and `close`). A crash (of hvsim or of the host) may lose writes
since the last flush, never more, and never leaves the file inconsistent. The rule that keeps it
consistent: *metadata that makes data visible is written only after that data is durable.*

- Data of a sector this file already holds (BAT entry and bitmap bit on the medium) is written
  in place at once; a crash leaves the old or the new sector.
- A sector bitmap bit newly set, and the BAT entry of a newly allocated block, are kept in
  memory (reads use them at once) and written at the next `flush`: barrier (fdatasync: the data
  and new blocks' bitmaps durable), then the bits and BAT entries, then a second barrier. So a
  crash leaves every BAT entry and every set bitmap bit pointing at data that was really
  written: never garbage. Data written to a block whose BAT entry a crash lost is unreachable
  (the reader sees the parent's or zeros, as before the write); the space is not reused.
- The last 512 bytes of the file are a valid footer at every moment (dynamic and differencing
  files also keep the identical copy at offset 0). A new block goes where the footer was, after
  the footer has been moved to the new end and made durable: that is the one barrier outside a
  flush, one per block allocated (a file system may persist a longer file size before its new
  last sector, so without it a crash could leave a file ending in zeros).
- Blocks are appended past everything else, so no write lands on metadata or on another block.

`write_barriers=False` (working copies nobody needs after a power cut) keeps the same order of
writes but drops the barriers that order them; `flush` still ends with an fdatasync, so what a
guest asks to be durable is. `syncs` counts the fdatasync calls made.

Data movement for sectors the tables already place (reads through the whole chain, writes to
present sectors) is one call into the C core (native/vhd_io.c) per request; it reads this
object's BAT and bitmaps in place and stops where a table would have to change or be loaded, and
the Python code below, the reference implementation of the layout, does the rest. `native_io`
(default on when the core loads) chooses; the tests hold the two paths to the same results.

Opening takes an advisory `flock` on the file: exclusive for read-write, shared for read-only, so
two writers, or a writer and a disk using the file as a parent, cannot run together.

Not thread-safe: callers serialise access to one `VirtualDisk`.
"""
from __future__ import annotations

from typing import Iterator

import errno
import fcntl
import os
import re
import stat
import time
import uuid

from drivers.storage.vhd_format import (
    DEFAULT_BLOCK_SIZE, FOOTER_SIZE, MAX_BLOCK_SIZE, MAX_DISK_SIZE, MIN_BLOCK_SIZE, NO_DATA_OFFSET,
    SECTOR_SIZE, UNALLOCATED, DiskType, DynamicHeader, Footer, PlatformCode, VhdCorruptError,
    VhdError, VhdParentError, VhdRangeError, bitmap_from_disk, bitmap_runs, bitmap_to_disk,
    geometry_for, pack_bat_entry, sector_align, sector_mask, uuid_text, vhd_timestamp,
)
from drivers.storage.vhd_layout import (
    DYNAMIC_HEADER_AT, Metadata, ParentLink, locator_text, new_file_layout, parent_locator_paths,
    read_metadata, write_new_file,
)

__all__ = [
    "VirtualDisk", "VhdError", "VhdCorruptError", "VhdParentError", "VhdRangeError", "VhdInUseError",
    "KINDS",
]

# Creator application written into every footer. Readers disagree on where a VHD's size lives:
# Virtual PC (and qemu for creators "vpc ", "qemu" and unknown ones) multiplies out the CHS
# geometry, which the spec's algorithm rounds *down*; Hyper-V, Windows and qemu for creators
# "win ", "qem2", "d2v ", "CTXS" and "tap\0" use `current_size`. hvsim disks follow Hyper-V's
# rules (exact current_size, spec geometry), so they carry Hyper-V's marker, and every reader
# then sees exactly the requested size.
CREATOR_APP = b"win "
CREATOR_HOST_OS = b"Wi2k"
CREATOR_VERSION = (0 << 16) | 1  # hvsim 0.1, major.minor in 16 bits each

KINDS = {"fixed": DiskType.FIXED, "dynamic": DiskType.DYNAMIC, "differencing": DiskType.DIFFERENCING}
_KIND_NAMES = {value: name for name, value in KINDS.items()}

# Differencing chains longer than this are refused (also stops a loop of files naming each other).
MAX_CHAIN_DEPTH = 64

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]|^\\\\")


class VhdInUseError(VhdError):
    """Another open disk holds the file (as a writer, or as a parent while we want to write)."""


class VirtualDisk:
    """An open VHD file. Construct with `VirtualDisk.create` or `VirtualDisk.open`."""

    def __init__(self, *, path: str, fd: int, read_only: bool, write_barriers: bool, meta: Metadata,
                 parent: VirtualDisk | None, parent_path: str | None) -> None:
        # Internal: every argument has been checked by `open`.
        footer, header = meta.footer, meta.header
        self._path = path
        self._fd = fd
        self._read_only = read_only
        self._barriers = write_barriers
        self._footer = footer
        self._footer_bytes = footer.pack()
        self._header = header
        self._bat = meta.bat
        self._parent = parent
        self._parent_path = parent_path
        self._bitmaps: dict[int, int] = {}  # block index → sector bitmap (bit i = sector i)
        # The write cache: BAT entries and bitmaps ahead of the file, written at the next flush
        # (after a barrier), and whether anything was written since the last one.
        self._pending_bat: set[int] = set()
        self._pending_bits: set[int] = set()
        self._dirty = False
        self._syncs = 0
        # The C path's view of this disk (None: Python only): see `_native_setup`. A fixed disk's
        # own requests stay in Python (one pread/pwrite already: the crossing would cost more
        # than it saves); its struct serves the reads of the children it is a parent of.
        self._c = None
        self._c_direct = False
        self._bitmap_bufs: dict[int, bytearray] = {}  # block → bitmap in the file's bit order
        # Where the trailing footer starts: the next block goes here.
        self._end = meta.file_size - FOOTER_SIZE
        self._size = footer.current_size
        if header is not None:
            self._block_size = header.block_size
            self._bitmap_size = header.bitmap_size
            self._full_bitmap = (1 << (self._block_size // SECTOR_SIZE)) - 1
        self._native_setup()

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike, size: int | None, kind: str,
               parent: str | os.PathLike | None = None, *, block_size: int | None = None,
               created_at: float | None = None, unique_id: uuid.UUID | None = None,
               write_barriers: bool = True) -> VirtualDisk:
        """Create a new VHD at `path` and return it open read-write.

        `kind` is "fixed", "dynamic" or "differencing". A differencing disk needs `parent` and
        takes its size (`size` may be None, or must equal it). `size` is in bytes, a multiple of
        512, at most 2040 GiB; every reader sees exactly this size. `created_at` (Unix seconds,
        default now) and `unique_id` (default random) are injectable for reproducible files.
        Refuses to replace an existing file; the file appears complete or not at all.
        """
        path = os.fspath(path)
        disk_type = KINDS.get(kind) if isinstance(kind, str) else None
        if disk_type is None:
            raise VhdError(f"{path}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if (parent is None) != (disk_type is not DiskType.DIFFERENCING):
            raise VhdError(f"{path}: a parent is required for, and only for, a differencing disk")
        if block_size is not None and disk_type is DiskType.FIXED:
            raise VhdError(f"{path}: a fixed disk has no blocks; block_size does not apply")
        stamp = vhd_timestamp(time.time() if created_at is None else created_at)
        disk_id = (uuid.uuid4() if unique_id is None else unique_id).bytes

        if disk_type is DiskType.DIFFERENCING:
            assert parent is not None
            with cls.open(parent, read_only=True) as base:
                if size is not None and size != base.size:
                    raise VhdError(f"{path}: size {size} differs from the parent's size {base.size}; "
                                   "a differencing disk takes its parent's size")
                size = base.size
                geometry = base._footer.geometry
                if block_size is None:
                    block_size = base._block_size if base._header is not None else DEFAULT_BLOCK_SIZE
                link = ParentLink(os.path.abspath(base.path), base._footer.unique_id,
                                  vhd_timestamp(os.fstat(base._fd).st_mtime))
        else:
            _check_new_size(path, size)
            assert size is not None
            geometry = geometry_for(size)
            link = None
        block_size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
        if (not isinstance(block_size, int) or block_size & (block_size - 1)
                or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE):
            raise VhdError(f"{path}: block size {block_size} is not a power of two in "
                           f"[{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]")

        footer = Footer(
            disk_type=disk_type, current_size=size, original_size=size, geometry=geometry,
            unique_id=disk_id, timestamp=stamp, creator_app=CREATOR_APP,
            creator_version=CREATOR_VERSION, creator_host_os=CREATOR_HOST_OS,
            data_offset=NO_DATA_OFFSET if disk_type is DiskType.FIXED else DYNAMIC_HEADER_AT,
        )
        try:
            write_new_file(path, new_file_layout(path, footer, block_size, link))
        except OSError as exc:
            if exc.filename in (None, path):
                raise
            # The file is written under a temporary name beside it first: report the path the
            # caller gave, not that internal one.
            raise type(exc)(exc.errno, exc.strerror, path) from None
        return cls.open(path, write_barriers=write_barriers)

    @classmethod
    def open(cls, path: str | os.PathLike, *, read_only: bool = False,
             write_barriers: bool = True) -> VirtualDisk:
        """Open an existing VHD (and, for a differencing disk, its chain of parents read-only).

        Raises `VhdCorruptError` for a file that breaks the format, `VhdParentError` when a parent
        is missing or is not the one the child was made from, `VhdInUseError` when another open
        disk holds the file, and `OSError` when the file cannot be opened at all.
        """
        return cls._open(os.fspath(path), read_only, write_barriers, chain=())

    @classmethod
    def _open(cls, path: str, read_only: bool, write_barriers: bool,
              chain: tuple[tuple[int, int], ...]) -> VirtualDisk:
        # O_NONBLOCK so that opening a FIFO (or a device) returns at once instead of waiting for
        # a writer; it is refused just below, and regular-file I/O ignores the flag.
        fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0))
        parent: VirtualDisk | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise VhdError(f"{path}: not a regular file (a VHD must be one)")
            os.set_blocking(fd, True)
            _lock(fd, path, read_only)
            chain = chain + ((st.st_dev, st.st_ino),)
            meta = read_metadata(fd, path, st.st_size)
            parent_path = None
            if meta.footer.disk_type is DiskType.DIFFERENCING:
                assert meta.header is not None
                parent, parent_path = _open_parent(fd, path, meta.header, chain)
            return cls(path=path, fd=fd, read_only=read_only, write_barriers=write_barriers,
                       meta=meta, parent=parent, parent_path=parent_path)
        except BaseException:
            if parent is not None:
                parent.close()
            os.close(fd)
            raise

    # --- properties --------------------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def size(self) -> int:
        """Virtual disk size in bytes."""
        return self._size

    @property
    def kind(self) -> str:
        """"fixed", "dynamic" or "differencing"."""
        return _KIND_NAMES[self._footer.disk_type]

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def parent(self) -> VirtualDisk | None:
        return self._parent

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def native_io(self) -> bool:
        """Whether the C path is on (see the module docstring; a fixed disk uses it only
        through the children it is a parent of)."""
        return self._c is not None

    @native_io.setter
    def native_io(self, on: bool) -> None:
        if on and self._c is None:
            self._native_setup()
        elif not on:
            self._c = None
            self._c_direct = False

    @property
    def syncs(self) -> int:
        """fdatasync calls made on this file so far (barriers and flushes)."""
        return self._syncs

    @property
    def block_size(self) -> int | None:
        return self._block_size if self._header is not None else None

    @property
    def allocated_blocks(self) -> int:
        if self._bat is None:
            return 0
        return sum(1 for entry in self._bat if entry != UNALLOCATED)

    def info(self) -> dict:
        """Plain, JSON-ready description of the file (what `hvsim vhd info` prints)."""
        self._check_open()
        f, h = self._footer, self._header
        cylinders, heads, spt = f.geometry
        result = {
            "path": self._path,
            "kind": self.kind,
            "size": self._size,
            "original_size": f.original_size,
            "geometry": {"cylinders": cylinders, "heads": heads, "sectors_per_track": spt},
            "creator_app": f.creator_app.decode("latin-1"),
            "creator_version": f"{f.creator_version >> 16}.{f.creator_version & 0xFFFF}",
            "creator_host_os": f.creator_host_os.decode("latin-1"),
            "timestamp": f.timestamp,
            "uuid": uuid_text(f.unique_id),
            "saved_state": bool(f.saved_state),
            "block_size": None,
            "allocated_blocks": 0,
            "total_blocks": 0,
            "file_size": os.fstat(self._fd).st_size,
        }
        if h is not None:
            result.update(block_size=h.block_size, allocated_blocks=self.allocated_blocks,
                          total_blocks=-(-self._size // h.block_size))
        if f.disk_type is DiskType.DIFFERENCING:
            assert h is not None
            result.update(parent_path=self._parent_path, parent_uuid=uuid_text(h.parent_unique_id),
                          parent_name=h.parent_name, parent_timestamp=h.parent_timestamp,
                          parent_locators={
                              loc.platform.decode("latin-1"): locator_text(self._fd, loc)
                              for loc in h.locators
                              if loc.platform in (PlatformCode.W2RU.value, PlatformCode.W2KU.value)})
        return result

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("read-only" if self._read_only else "read-write")
        return f"<VirtualDisk {self._path!r} {self.kind} {self._size} bytes {state}>"

    # --- I/O ---------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes of the virtual disk from `offset` (any alignment)."""
        self._check_range(offset, length, "read")
        buf = bytearray(length)
        self._read_into(offset, memoryview(buf))
        return bytes(buf)

    def readinto(self, offset: int, buffer) -> int:
        """Fill a writable buffer from the virtual disk at `offset`; returns the byte count."""
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view), "read")
        self._read_into(offset, view)
        return len(view)

    def write(self, offset: int, data) -> None:
        """Write bytes-like `data` at `offset` (any alignment), allocating blocks as needed."""
        view = memoryview(data).cast("B")
        self._check_range(offset, len(view), "write")
        if self._read_only:
            raise VhdError(f"{self._path}: opened read-only; cannot write")
        if not view:
            return
        self._dirty = True
        if self._c_direct and not (offset | len(view)) % SECTOR_SIZE:
            done = self._native(self._c_write, offset, view)
            if done == len(view):
                return
            offset, view = offset + done, view[done:]   # the rest needs a table change
        if self._header is None:
            self._pwrite(view, offset)
            return
        # Sparse disks track presence per sector: widen a ragged write to whole sectors, filling
        # the edges with what the disk reads there now (from this file, a parent, or zeros).
        head = offset % SECTOR_SIZE
        tail = -(offset + len(view)) % SECTOR_SIZE
        if head or tail:
            start = offset - head
            wide = bytearray(head + len(view) + tail)
            wide_view = memoryview(wide)
            if head:
                self._read_into(start, wide_view[:SECTOR_SIZE])
            if tail and (not head or len(wide) > SECTOR_SIZE):
                self._read_into(start + len(wide) - SECTOR_SIZE, wide_view[-SECTOR_SIZE:])
            wide_view[head:head + len(view)] = view
            offset, view = start, wide_view
        self._write_sectors(offset, view)

    def flush(self) -> None:
        """Make every completed write durable: when metadata was held back since the last flush
        (bitmap bits, BAT entries), a barrier and that metadata; then fdatasync. Nothing to do
        (no sync) when nothing was written since the last flush."""
        self._check_open()
        if self._read_only or not self._dirty:
            return
        if self._pending_bits or self._pending_bat:
            self._barrier()
            for block in sorted(self._pending_bits):
                self._pwrite(memoryview(bitmap_to_disk(self._bitmaps[block], self._bitmap_size)),
                             self._bat[block] * SECTOR_SIZE)
            for block in sorted(self._pending_bat):
                self._pwrite(memoryview(pack_bat_entry(self._bat[block])),
                             self._header.table_offset + 4 * block)
            self._pending_bits.clear()
            self._pending_bat.clear()
        self._sync()
        self._dirty = False

    def own_ranges(self) -> Iterator[tuple[int, int]]:
        """(offset, length) of the byte ranges this file itself holds: every byte of a fixed
        disk; the allocated sectors of a dynamic or differencing one (what a merge copies)."""
        self._check_open()
        if self._header is None:
            yield 0, self._size
            return
        assert self._bat is not None
        sectors = self._block_size // SECTOR_SIZE
        for block, entry in enumerate(self._bat):
            if entry == UNALLOCATED:
                continue
            for present, sector, count in bitmap_runs(self._bitmap(block), 0, sectors):
                start = block * self._block_size + sector * SECTOR_SIZE
                if present and start < self._size:
                    yield start, min(count * SECTOR_SIZE, self._size - start)

    def close(self) -> None:
        """Flush (as a disk does on shutdown), then close the file and its parents. Idempotent;
        the file is closed even when the flush fails (and the error is raised)."""
        try:
            if self._fd >= 0:
                self.flush()
        finally:
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                self._c, self._c_direct = None, False
                os.close(fd)  # also drops the flock
            if self._parent is not None:
                self._parent.close()

    def __enter__(self) -> VirtualDisk:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- internals: reading -----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._fd < 0:
            raise VhdError(f"{self._path}: disk is closed")

    def _check_range(self, offset: int, length: int, verb: str) -> None:
        self._check_open()
        if not isinstance(offset, int) or not isinstance(length, int):
            raise VhdRangeError(f"{self._path}: {verb} offset and length must be integers")
        if offset < 0 or length < 0 or offset + length > self._size:
            raise VhdRangeError(
                f"{self._path}: {verb} of {length} bytes at offset {offset} is outside the "
                f"disk's {self._size} bytes")

    def _blocks(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """Split [offset, offset + length) at block boundaries: (block, offset in block, offset
        in the range, bytes)."""
        pos = 0
        while pos < length:
            block, in_block = divmod(offset + pos, self._block_size)
            chunk = min(length - pos, self._block_size - in_block)
            yield block, in_block, pos, chunk
            pos += chunk

    def _read_into(self, offset: int, view: memoryview) -> None:
        if self._c_direct and len(view):
            done = self._native(self._c_read, offset, view)
            if done == len(view):
                return
            offset, view = offset + done, view[done:]   # a table to load: the reference does it
        self._read_into_py(offset, view)

    def _read_into_py(self, offset: int, view: memoryview) -> None:
        if self._header is None:
            self._pread_into(view, offset)
            return
        block_size, bat = self._block_size, self._bat
        assert bat is not None
        for block, in_block, pos, chunk in self._blocks(offset, len(view)):
            dst = view[pos:pos + chunk]
            entry = bat[block]
            if entry == UNALLOCATED:
                self._read_absent(offset + pos, dst)
            else:
                data_at = entry * SECTOR_SIZE + self._bitmap_size
                first = in_block // SECTOR_SIZE
                count = (in_block + chunk - 1) // SECTOR_SIZE - first + 1
                for present, sector, sectors in bitmap_runs(self._bitmap(block), first, count):
                    lo = max(sector * SECTOR_SIZE, in_block)
                    hi = min((sector + sectors) * SECTOR_SIZE, in_block + chunk)
                    part = dst[lo - in_block:hi - in_block]
                    if present:
                        self._pread_into(part, data_at + lo)
                    else:
                        self._read_absent(block * block_size + lo, part)

    def _read_absent(self, offset: int, dst: memoryview) -> None:
        """Bytes this file does not hold: the parent's (zeros past its end), or zeros."""
        inherited = 0
        if self._parent is not None and offset < self._parent.size:
            inherited = min(len(dst), self._parent.size - offset)
            self._parent.readinto(offset, dst[:inherited])
        if inherited < len(dst):
            dst[inherited:] = bytes(len(dst) - inherited)

    def _bitmap(self, block: int) -> int:
        bits = self._bitmaps.get(block)
        if bits is None:
            assert self._bat is not None
            raw = os.pread(self._fd, self._bitmap_size, self._bat[block] * SECTOR_SIZE)
            if len(raw) != self._bitmap_size:
                raise VhdCorruptError(f"{self._path}: sector bitmap of block {block} is cut short by "
                                      "the end of the file (file truncated while open?)")
            bits = bitmap_from_disk(raw)
            self._store_bitmap(block, bits)
        return bits

    def _store_bitmap(self, block: int, bits: int) -> None:
        """Set a block's in-memory bitmap (both forms: the int, and the bytes the C path reads)."""
        self._bitmaps[block] = bits
        buf = self._bitmap_bufs.get(block)
        if buf is None:
            buf = self._bitmap_bufs[block] = bytearray(self._bitmap_size)
        buf[:] = bitmap_to_disk(bits, self._bitmap_size)
        if self._c is not None:
            self._c.set_bitmap(block, buf)

    # --- internals: the C path --------------------------------------------------------------

    def _native_setup(self) -> None:
        """Describe this disk to the C path (nothing if the core does not load)."""
        core = _core()
        if core is None or (self._parent is not None and self._parent._c is None):
            return
        if self._bat is not None and self._bat.itemsize != 4:  # pragma: no cover - see unpack_bat
            return
        if self._header is None:
            c = core.VhdDisk(self._fd, self._size)
        else:
            # The BAT array and the bitmap buffers are read in place: they are never resized.
            c = core.VhdDisk(self._fd, self._size, self._block_size, self._bitmap_size, self._bat,
                             None if self._parent is None else self._parent._c)
            for block, buf in self._bitmap_bufs.items():
                c.set_bitmap(block, buf)
        self._c_read, self._c_write = core.hv_vhd_read, core.hv_vhd_write
        self._c = c
        self._c_direct = self._header is not None

    def _native(self, call, offset: int, view: memoryview) -> int:
        """One C call over `view`; returns the bytes it moved (all of them, or up to where the
        Python code must take over)."""
        rc, done = call(self._c, offset, view)
        if rc == 0 or rc == _NEED_METADATA:
            return done
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), self._path)
        if rc == _PAST_EOF:
            raise VhdCorruptError(f"{self._path}: data at disk offset {offset + done} lies past the end "
                                  "of the file (file truncated while open?)")
        raise VhdError(f"{self._path}: the C path refused a request at {offset} of {len(view)} bytes")

    def _pread_into(self, view: memoryview, at: int) -> None:
        done = 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], at + done)
            if n == 0:
                raise VhdCorruptError(
                    f"{self._path}: data at file offset {at + done} is past the end of the file "
                    "(file truncated while open?)")
            done += n

    # --- internals: writing -----------------------------------------------------------------

    def _write_sectors(self, offset: int, view: memoryview) -> None:
        bat = self._bat
        assert bat is not None
        for block, in_block, pos, chunk in self._blocks(offset, len(view)):
            src = view[pos:pos + chunk]
            entry = bat[block]
            if entry == UNALLOCATED:
                self._allocate(block, in_block, src)
            else:
                self._pwrite(src, entry * SECTOR_SIZE + self._bitmap_size + in_block)
                bits = self._bitmap(block)
                mask = sector_mask(in_block // SECTOR_SIZE, chunk // SECTOR_SIZE)
                if bits & mask != mask:
                    # The data must be durable before the bits that make it visible: the bits
                    # reach the file at the next flush, after its barrier.
                    self._store_bitmap(block, bits | mask)
                    self._pending_bits.add(block)

    def _allocate(self, block: int, in_block: int, src: memoryview) -> None:
        """Give `block` space at the end of the file and write `src` into it at `in_block`.

        Order: footer at the new end, barrier; bitmap (over the old footer) and data. The
        barrier keeps a valid footer at the end of the file whatever the file system reorders.
        The BAT entry waits for the next flush (after its barrier), so it never reaches the disk
        before the block. The block's other bytes are a hole past the old end of file, so they
        read as zeros.
        """
        assert self._bat is not None and self._header is not None
        at = sector_align(self._end)
        new_end = at + self._bitmap_size + self._block_size
        if at // SECTOR_SIZE >= UNALLOCATED:
            raise VhdError(f"{self._path}: file would grow past the 2 TiB a BAT entry can address")
        if self._parent is None:
            # No parent to fall through to, and the unwritten rest of the block reads as zeros:
            # mark every sector present once, as qemu does, so later writes need no bitmap update.
            bits = self._full_bitmap
        else:
            bits = sector_mask(in_block // SECTOR_SIZE, len(src) // SECTOR_SIZE)
        self._pwrite(memoryview(self._footer_bytes), new_end)
        self._barrier()
        self._end = new_end
        # The bitmap as it stands goes now (before the flush's first barrier): the block is
        # unreachable until its BAT entry is written, and that is after the barrier.
        self._pwrite(memoryview(bitmap_to_disk(bits, self._bitmap_size)), at)
        self._pwrite(src, at + self._bitmap_size + in_block)
        self._bat[block] = at // SECTOR_SIZE
        self._store_bitmap(block, bits)
        self._pending_bat.add(block)

    def _barrier(self) -> None:
        """Order: writes before it reach stable storage before any write after it."""
        if self._barriers:
            self._sync()

    def _sync(self) -> None:
        os.fdatasync(self._fd)
        self._syncs += 1

    def _pwrite(self, view: memoryview, at: int) -> None:
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], at + done)


# --- the C path ------------------------------------------------------------------------------

_NEED_METADATA = 1   # native/vhd_io.h: HV_VHD_NEED_METADATA
_PAST_EOF = 2        # HV_VHD_PAST_EOF
_CORE: list = []


def _core():
    """The binding of the compiled core, or None when it does not load (or predates the C
    path): the Python code is complete on its own."""
    if not _CORE:
        try:
            from hypervisor import _binding
        except ImportError:
            _binding = None
        _CORE.append(_binding if hasattr(_binding, "VhdDisk") else None)
        if _CORE[0] is not None:
            assert (_binding.constant("HV_VHD_NEED_METADATA"), _binding.constant("HV_VHD_PAST_EOF")) \
                == (_NEED_METADATA, _PAST_EOF), "native/vhd_io.h and vhd.py disagree"
    return _CORE[0]


# --- opening and creating ------------------------------------------------------------------

def _lock(fd: int, path: str, read_only: bool) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise VhdInUseError(
                f"{path}: in use by another open disk "
                f"({'a writer' if read_only else 'a reader or writer'} holds it)") from None
        raise


def _open_parent(fd: int, path: str, header: DynamicHeader,
                 chain: tuple[tuple[int, int], ...]) -> tuple[VirtualDisk, str]:
    """Find the parent by relative, then absolute locator, then header name; check its identity."""
    if len(chain) > MAX_CHAIN_DEPTH:
        raise VhdParentError(f"{path}: differencing chain is deeper than {MAX_CHAIN_DEPTH} disks")
    child_dir = os.path.dirname(os.path.abspath(path))
    tried: list[str] = []
    for candidate in parent_locator_paths(fd, header):
        if os.sep == "/":
            if _WINDOWS_DRIVE.match(candidate):
                tried.append(f"{candidate} (a Windows path)")
                continue
            candidate = candidate.replace("\\", "/")
        full = os.path.normpath(os.path.join(child_dir, candidate))
        try:
            st = os.stat(full)
        except OSError as exc:
            tried.append(f"{full} ({exc.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            tried.append(f"{full} (not a regular file)")
            continue
        if (st.st_dev, st.st_ino) in chain:
            raise VhdParentError(f"{path}: parent {full} is already in this disk's chain (a loop)")
        parent = VirtualDisk._open(full, True, True, chain)
        if parent._footer.unique_id == header.parent_unique_id:
            return parent, full
        tried.append(f"{full} (unique id {uuid_text(parent._footer.unique_id)})")
        parent.close()
    raise VhdParentError(
        f"{path}: parent with unique id {uuid_text(header.parent_unique_id)} not found; tried: "
        + ("; ".join(tried) if tried else "nothing (no parent locators)"))


def _check_new_size(path: str, size: object) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise VhdError(f"{path}: size must be an integer number of bytes, got {size!r}")
    if size <= 0 or size > MAX_DISK_SIZE:
        raise VhdError(f"{path}: size {size} is not between 1 sector and {MAX_DISK_SIZE} bytes (2040 GiB)")
    if size % SECTOR_SIZE:
        below = size - size % SECTOR_SIZE
        raise VhdError(f"{path}: size {size} is not a multiple of {SECTOR_SIZE} bytes "
                       f"(nearest: {below} or {below + SECTOR_SIZE})")
