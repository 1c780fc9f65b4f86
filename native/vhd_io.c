/* vhd_io.c: VHD data movement for present sectors; the Python VirtualDisk owns the layout (see
 * vhd_io.h for the division of work and the stop rules). */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "vhd_io.h"

/* Differencing chains deeper than the Python side allows are refused there; this bound only
 * keeps a malformed description from recursing without end. */
#define MAX_DEPTH 64

static int pread_full(int fd, uint8_t *buf, uint64_t len, uint64_t at)
{
    while (len) {
        ssize_t n = pread(fd, buf, len, (off_t)at);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return HV_VHD_PAST_EOF;
        buf += n, at += (uint64_t)n, len -= (uint64_t)n;
    }
    return HV_VHD_OK;
}

static int pwrite_full(int fd, const uint8_t *buf, uint64_t len, uint64_t at)
{
    while (len) {
        ssize_t n = pwrite(fd, buf, len, (off_t)at);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        buf += n, at += (uint64_t)n, len -= (uint64_t)n;
    }
    return HV_VHD_OK;
}

/* Sector `s` of a block present in its bitmap (file bit order: sector 0 is bit 7 of byte 0). */
static inline int present(const uint8_t *bitmap, uint32_t s)
{
    return (bitmap[s >> 3] >> (7 - (s & 7))) & 1;
}

/* Sectors from `s` (below `end`) with the same presence as sector s. */
static uint32_t run_length(const uint8_t *bitmap, uint32_t s, uint32_t end)
{
    int want = present(bitmap, s);
    uint8_t whole = want ? 0xFF : 0x00;
    uint32_t i = s + 1;
    while (i < end) {
        if ((i & 7) == 0 && end - i >= 8 && bitmap[i >> 3] == whole) {
            i += 8;
            continue;
        }
        if (present(bitmap, i) != want)
            break;
        i++;
    }
    return i - s;
}

static int valid(const struct hv_vhd_disk *d, uint64_t offset, uint64_t len)
{
    if (d == NULL || d->fd < 0 || offset > d->size || len > d->size - offset)
        return 0;
    if (d->block_size == 0)
        return 1;
    if (d->block_size % HV_VHD_SECTOR || d->bat == NULL || d->bitmaps == NULL)
        return 0;
    /* Every block of the disk has an entry. */
    return d->size <= (uint64_t)d->bat_entries * d->block_size;
}

/* A fixed disk's request: the file holds the disk's bytes at the same offsets. */
static int fixed_io(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *rbuf, const uint8_t *wbuf,
                    uint64_t len, uint64_t *done)
{
    int rc = rbuf != NULL ? pread_full(d->fd, rbuf, len, offset) : pwrite_full(d->fd, wbuf, len, offset);
    if (rc == HV_VHD_OK)
        *done = len;
    return rc;
}

/* The part of a request (disk offset `offset`, `len` bytes, `pos` of them done) that lies in
 * one block of a sparse disk: the read and the write loops walk a request by these. */
struct block_part {
    uint64_t block;    /* the block's index */
    uint32_t in_block; /* where the part starts in the block */
    uint64_t chunk;    /* the part's bytes */
    uint32_t entry;    /* the block's BAT entry */
    uint64_t data_at;  /* file offset of the block's data (past its bitmap), if allocated */
};

static struct block_part block_part(const struct hv_vhd_disk *d, uint64_t offset, uint64_t pos, uint64_t len)
{
    struct block_part b;
    uint64_t at = offset + pos;
    b.block = at / d->block_size;
    b.in_block = (uint32_t)(at % d->block_size);
    b.chunk = d->block_size - b.in_block;
    if (b.chunk > len - pos)
        b.chunk = len - pos;
    b.entry = d->bat[b.block];
    b.data_at = (uint64_t)b.entry * HV_VHD_SECTOR + d->bitmap_size;
    return b;
}

static int read_chain(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *buf, uint64_t len,
                      uint64_t *done, int depth);

/* Bytes this disk does not hold: its parent's (zeros past the parent's end), or zeros. */
static int read_absent(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *buf, uint64_t len,
                       uint64_t *done, int depth)
{
    uint64_t inherited = 0;
    *done = 0;
    if (d->parent != NULL && offset < d->parent->size) {
        inherited = d->parent->size - offset < len ? d->parent->size - offset : len;
        int rc = read_chain(d->parent, offset, buf, inherited, done, depth + 1);
        if (rc != HV_VHD_OK)
            return rc;
    }
    memset(buf + inherited, 0, len - inherited);
    *done = len;
    return HV_VHD_OK;
}

static int read_chain(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *buf, uint64_t len,
                      uint64_t *done, int depth)
{
    *done = 0;
    if (depth > MAX_DEPTH || !valid(d, offset, len))
        return HV_VHD_EINVAL;
    if (d->block_size == 0)
        return fixed_io(d, offset, buf, NULL, len, done);
    uint64_t pos = 0;
    while (pos < len) {
        struct block_part b = block_part(d, offset, pos, len);
        uint64_t block = b.block, chunk = b.chunk, data_at = b.data_at;
        uint32_t in_block = b.in_block;
        uint64_t part = 0;
        int rc;
        if (b.entry == HV_VHD_UNALLOCATED) {
            rc = read_absent(d, offset + pos, buf + pos, chunk, &part, depth);
            pos += part;
            if (rc != HV_VHD_OK) {
                *done = pos;
                return rc;
            }
            continue;
        }
        const uint8_t *bitmap = d->bitmaps[block];
        if (bitmap == NULL) {
            *done = pos;
            return HV_VHD_NEED_METADATA;
        }
        uint32_t first = in_block / HV_VHD_SECTOR;
        uint32_t end = (uint32_t)((in_block + chunk - 1) / HV_VHD_SECTOR) + 1;
        uint32_t s = first;
        while (s < end) {
            uint32_t n = run_length(bitmap, s, end);
            uint64_t lo = (uint64_t)s * HV_VHD_SECTOR, hi = (uint64_t)(s + n) * HV_VHD_SECTOR;
            if (lo < in_block)
                lo = in_block;
            if (hi > in_block + chunk)
                hi = in_block + chunk;
            uint8_t *dst = buf + pos + (lo - in_block);
            if (present(bitmap, s)) {
                rc = pread_full(d->fd, dst, hi - lo, data_at + lo);
                part = rc == HV_VHD_OK ? hi - lo : 0;
            } else {
                rc = read_absent(d, block * d->block_size + lo, dst, hi - lo, &part, depth);
            }
            if (rc != HV_VHD_OK) {
                *done = pos + (lo - in_block) + part;
                return rc;
            }
            s += n;
        }
        pos += chunk;
    }
    *done = len;
    return HV_VHD_OK;
}

int hv_vhd_read(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *buf, uint64_t len, uint64_t *done)
{
    return read_chain(d, offset, buf, len, done, 0);
}

int hv_vhd_write(const struct hv_vhd_disk *d, uint64_t offset, const uint8_t *buf, uint64_t len, uint64_t *done)
{
    *done = 0;
    if (!valid(d, offset, len))
        return HV_VHD_EINVAL;
    if (d->block_size == 0)
        return fixed_io(d, offset, NULL, buf, len, done);
    if (offset % HV_VHD_SECTOR || len % HV_VHD_SECTOR)
        return HV_VHD_EINVAL;
    uint64_t pos = 0;
    while (pos < len) {
        struct block_part b = block_part(d, offset, pos, len);
        const uint8_t *bitmap = b.entry == HV_VHD_UNALLOCATED ? NULL : d->bitmaps[b.block];
        if (bitmap == NULL) {
            *done = pos;
            return HV_VHD_NEED_METADATA;
        }
        uint64_t chunk = b.chunk;
        uint32_t first = b.in_block / HV_VHD_SECTOR, end = first + (uint32_t)(chunk / HV_VHD_SECTOR);
        uint32_t n = present(bitmap, first) ? run_length(bitmap, first, end) : 0;
        /* Write the present sectors at the front; a sector not present needs its bit set first
         * (after the data: the Python side orders that), so stop there. */
        uint64_t bytes = (uint64_t)n * HV_VHD_SECTOR;
        int rc = bytes ? pwrite_full(d->fd, buf + pos, bytes, b.data_at + b.in_block) : HV_VHD_OK;
        if (rc != HV_VHD_OK) {
            *done = pos;
            return rc;
        }
        pos += bytes;
        if (bytes < chunk) {
            *done = pos;
            return HV_VHD_NEED_METADATA;
        }
    }
    *done = len;
    return HV_VHD_OK;
}
