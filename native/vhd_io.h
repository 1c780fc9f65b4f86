/* vhd_io.h: VHD data movement in C (fixed, dynamic, differencing) for drivers/storage/vhd.py.
 *
 * The Python VirtualDisk is the one implementation of the VHD layout: it opens and checks the
 * file, owns the block allocation table (BAT) and the sector bitmaps, and decides every change to
 * them (allocating a block, setting bitmap bits, moving the footer). This C side only moves data
 * for sectors the tables already say where to find, reading the Python side's tables in place:
 *
 *   - `bat` is the Python array of BAT entries (host byte order, sector offsets of blocks, or
 *     HV_VHD_UNALLOCATED), `bitmaps[block]` the in-memory sector bitmap of an allocated block in
 *     the file's bit order (sector 0 = most significant bit of byte 0), or NULL when the Python
 *     side has not loaded it yet. The in-memory tables may be ahead of the file (the write cache
 *     holds bitmap bits and BAT entries back until a flush); reads follow the in-memory ones.
 *   - A call stops, with HV_VHD_NEED_METADATA and the bytes done so far in *done, where it would
 *     need a table change or a table not loaded: a write to an unallocated block or to a sector
 *     not yet present, or any block whose bitmap is NULL (in this disk or a parent). The Python
 *     side does the rest of the request itself (and so loads or changes the tables), so a request
 *     is one crossing in the common case and never wrong in the others.
 *   - Sectors a differencing disk does not hold come from its parent chain (`parent`), zeros past
 *     the parent's end; a dynamic disk's absent sectors read as zeros.
 *
 * Every file access is pread/pwrite at offsets inside what the Python side checked on opening
 * (blocks lie inside the file, apart from metadata); a read that meets the end of the file
 * anyway (the file was truncated under us) stops with HV_VHD_PAST_EOF. */
#ifndef HV_VHD_IO_H
#define HV_VHD_IO_H

#include <stdint.h>

#define HV_VHD_UNALLOCATED 0xFFFFFFFFu
#define HV_VHD_SECTOR 512u

#define HV_VHD_OK 0
#define HV_VHD_NEED_METADATA 1   /* stopped: the Python side does the rest */
#define HV_VHD_PAST_EOF 2        /* a block's data lies past the end of the file */
#define HV_VHD_EINVAL 3          /* a request outside the disk, or a malformed description */
/* A negative status is -errno of the failing pread/pwrite. */

struct hv_vhd_disk {
    int32_t fd;
    uint32_t block_size;          /* 0: a fixed disk (no BAT, data at file offset = disk offset) */
    uint64_t size;                /* virtual size in bytes */
    uint32_t bitmap_size;         /* bytes of sector bitmap in front of each block */
    uint32_t bat_entries;
    const uint32_t *bat;
    uint8_t *const *bitmaps;      /* [bat_entries] */
    const struct hv_vhd_disk *parent;  /* differencing: the next disk of the chain, else NULL */
};

/* Read `len` bytes of the virtual disk from `offset` (any alignment) into `buf`. */
int hv_vhd_read(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *buf, uint64_t len, uint64_t *done);

/* Write `len` bytes at `offset` where the sectors are already present in this file (a fixed
 * disk: anywhere). Sparse disks: `offset` and `len` whole sectors, else HV_VHD_EINVAL. */
int hv_vhd_write(const struct hv_vhd_disk *d, uint64_t offset, const uint8_t *buf, uint64_t len, uint64_t *done);

#endif
