/* ring.c: VMBus rings in Hyper-V's layout for guest kernels, check for check and byte for byte
 * what vmbus/ring.py does (the reference; tests/native/test_guest_sdk.py holds the two to the
 * same bytes, indices and signals).
 *
 * Control page: write_index u32 @0, read_index u32 @4, interrupt_mask u32 @8, pending_send_sz
 * u32 @12, feature_bits u32 @64. A packet: descriptor (type u16, offset8 u16, len8 u16, flags
 * u16, trans_id u64) | header | payload | zeros to 8 | trailer u64 (start offset << 32).
 * Invariants: both indices are multiples of 8 below dsize; equal means empty; a writer never
 * makes them equal, so 8 bytes always stay free. The peer is hostile: each shared field is loaded
 * once per use, and the first inconsistency breaks the ring for good.
 */
#include "vmbus.h"

#define W_INDEX 0u
#define R_INDEX 4u
#define IMASK 8u
#define PENDING 12u
#define FEATURES 64u

static u32 load(const struct hvg_ring *ring, u32 offset)
{
    return *(volatile const u32 *)(ring->base + offset);
}

static void store(struct hvg_ring *ring, u32 offset, u32 value)
{
    hvg_mb(); /* everything written before is visible before the index that publishes it */
    *(volatile u32 *)(ring->base + offset) = value;
    hvg_mb();
}

static u32 pad8(u32 n) { return (n + 7u) & ~7u; }

static u32 used(const struct hvg_ring *ring, u32 w, u32 r)
{
    return w >= r ? w - r : ring->dsize - (r - w);
}

u32 hvg_ring_packet_size(u32 payload_len)
{
    return HVG_RING_DESC + pad8(payload_len) + HVG_RING_TRAILER;
}

void hvg_ring_reset(void *mem, u32 feature_bits)
{
    memset(mem, 0, HVG_RING_CONTROL);
    *(volatile u32 *)((u8 *)mem + FEATURES) = feature_bits;
}

int hvg_ring_attach(struct hvg_ring *ring, void *mem, u32 size)
{
    memset(ring, 0, sizeof *ring);
    if (size < HVG_RING_CONTROL + 32u || (size - HVG_RING_CONTROL) % 8u)
        return HVG_E_TOOBIG;
    ring->base = mem;
    ring->dsize = size - HVG_RING_CONTROL;
    return HVG_OK;
}

/* Load an index once and validate it; -1 (and the ring broken) if it is invalid. */
static int64_t index_of(struct hvg_ring *ring, u32 offset)
{
    u32 value = load(ring, offset);
    if (value >= ring->dsize || value % 8u) {
        ring->broken = 1;
        return -1;
    }
    return value;
}

/* The index this end owns, adopted at the first call; -1 if invalid or moved by the peer. */
static int64_t own_index(struct hvg_ring *ring, u32 offset)
{
    int64_t v = index_of(ring, offset);
    if (v < 0)
        return -1;
    if (!ring->adopted) {
        ring->adopted = 1;
        ring->own = ring->cursor = (u32)v;
    } else if ((u32)v != ring->own) {
        ring->broken = 1;
        return -1;
    }
    return v;
}

static void copy_in(struct hvg_ring *ring, u32 pos, const void *src, u32 n)
{
    u8 *data = ring->base + HVG_RING_CONTROL;
    u32 first = ring->dsize - pos;
    if (n == 0)
        return;
    if (n <= first) {
        memcpy(data + pos, src, n);
    } else {
        memcpy(data + pos, src, first);
        memcpy(data, (const u8 *)src + first, n - first);
    }
}

static void zero_in(struct hvg_ring *ring, u32 pos, u32 n)
{
    static const u8 zeros[8];
    while (n) {
        u32 k = n < 8u ? n : 8u;
        copy_in(ring, pos, zeros, k);
        pos = (pos + k) % ring->dsize;
        n -= k;
    }
}

static void copy_out(const struct hvg_ring *ring, u32 pos, void *dst, u32 n)
{
    const u8 *data = ring->base + HVG_RING_CONTROL;
    u32 first = ring->dsize - pos;
    if (n <= first) {
        memcpy(dst, data + pos, n);
    } else {
        memcpy(dst, data + pos, first);
        memcpy((u8 *)dst + first, data, n - first);
    }
}

/* Whether `total` bytes fit at w (free > total: never fill the ring to equal indices). With
 * request_space a packet that does not fit asks the reader to signal, then looks again: a reader
 * that freed space before it saw the request will not signal. */
static int fits(struct hvg_ring *ring, u32 w, u32 total, int request_space)
{
    int64_t r = index_of(ring, R_INDEX);
    if (r < 0)
        return -1;
    if (ring->dsize - used(ring, w, (u32)r) > total)
        return 1;
    if (!request_space)
        return 0;
    store(ring, PENDING, total);
    ring->requested = 1;
    r = index_of(ring, R_INDEX);
    if (r < 0)
        return -1;
    return ring->dsize - used(ring, w, (u32)r) > total;
}

int hvg_ring_write(struct hvg_ring *ring, u16 type, u16 flags, u64 trans_id, const void *header,
                   u32 header_len, const void *payload, u32 len, int request_space, int *signal)
{
    *signal = 0;
    if (ring->broken)
        return HVG_E_CORRUPT;
    if (header_len % 8u || header_len > ring->dsize || len > ring->dsize)
        return HVG_E_TOOBIG;
    u32 total = hvg_ring_packet_size(header_len + len);
    if ((total - HVG_RING_TRAILER) / 8u > 0xFFFFu || total > ring->dsize - 8u)
        return HVG_E_TOOBIG;
    int64_t w = own_index(ring, W_INDEX);
    if (w < 0)
        return HVG_E_CORRUPT;
    int fit = fits(ring, (u32)w, total, request_space);
    if (fit < 0)
        return HVG_E_CORRUPT;
    if (!fit)
        return HVG_E_FULL;

    u32 body = total - HVG_RING_TRAILER;
    u8 desc[HVG_RING_DESC];
    u16 words[4] = {type, (u16)((HVG_RING_DESC + header_len) / 8u), (u16)(body / 8u), flags};
    memcpy(desc, words, 8);
    memcpy(desc + 8, &trans_id, 8);
    u32 pos = (u32)w;
    copy_in(ring, pos, desc, HVG_RING_DESC);
    pos = (pos + HVG_RING_DESC) % ring->dsize;
    copy_in(ring, pos, header, header_len);
    pos = (pos + header_len) % ring->dsize;
    copy_in(ring, pos, payload, len);
    pos = (pos + len) % ring->dsize;
    u32 pad = body - HVG_RING_DESC - header_len - len;
    zero_in(ring, pos, pad);
    pos = (pos + pad) % ring->dsize;
    u64 trailer = (u64)w << 32;
    copy_in(ring, pos, &trailer, HVG_RING_TRAILER);

    u32 new_w = (u32)((w + total) % ring->dsize);
    store(ring, W_INDEX, new_w);
    ring->own = new_w;
    if (ring->requested) { /* the space this end asked for has been used */
        store(ring, PENDING, 0);
        ring->requested = 0;
    }
    /* Signal only on empty -> non-empty, and only if the reader has not masked interrupts;
     * read_index is loaded after publishing, so a reader that just went idle is woken. */
    *signal = load(ring, IMASK) == 0 && load(ring, R_INDEX) == (u32)w;
    return HVG_OK;
}

int hvg_ring_read(struct hvg_ring *ring, struct hvg_packet *pkt, void *buf, u32 cap)
{
    if (ring->broken)
        return HVG_E_CORRUPT;
    if (own_index(ring, R_INDEX) < 0)
        return HVG_E_CORRUPT;
    int64_t w = index_of(ring, W_INDEX);
    if (w < 0)
        return HVG_E_CORRUPT;
    u32 pos = ring->cursor;
    u32 avail = used(ring, (u32)w, pos);
    if (avail == 0)
        return HVG_E_EMPTY;
    if (avail < HVG_RING_DESC + HVG_RING_TRAILER) {
        ring->broken = 1;
        return HVG_E_CORRUPT;
    }
    /* The one snapshot of the descriptor: every check and field below comes from it. */
    u8 desc[HVG_RING_DESC];
    u16 words[4];
    copy_out(ring, pos, desc, HVG_RING_DESC);
    memcpy(words, desc, 8);
    u16 offset8 = words[1], len8 = words[2];
    if (offset8 < HVG_RING_DESC / 8u || offset8 > len8) {
        ring->broken = 1;
        return HVG_E_CORRUPT;
    }
    u32 length = (u32)len8 * 8u;
    if (length + HVG_RING_TRAILER > avail) {
        ring->broken = 1;
        return HVG_E_CORRUPT;
    }
    if (length - HVG_RING_DESC > cap)
        return HVG_E_TOOBIG;
    copy_out(ring, (pos + HVG_RING_DESC) % ring->dsize, buf, length - HVG_RING_DESC);
    ring->cursor = (pos + length + HVG_RING_TRAILER) % ring->dsize;
    pkt->type = words[0];
    pkt->offset8 = offset8;
    pkt->len8 = len8;
    pkt->flags = words[3];
    memcpy(&pkt->trans_id, desc + 8, 8);
    pkt->header_len = (u32)offset8 * 8u - HVG_RING_DESC;
    pkt->payload_len = length - (u32)offset8 * 8u;
    return HVG_OK;
}

int hvg_ring_commit(struct hvg_ring *ring)
{
    if (ring->broken)
        return HVG_E_CORRUPT;
    int64_t r = own_index(ring, R_INDEX);
    if (r < 0)
        return HVG_E_CORRUPT;
    u32 consumed = used(ring, ring->cursor, (u32)r);
    if (consumed == 0)
        return 0;
    store(ring, R_INDEX, ring->cursor);
    ring->own = ring->cursor;
    /* Signal the writer only if it asked (feature bit and pending_send_sz) and this commit made
     * the free space cross its request: free before <= pending < free now. */
    if (!(load(ring, FEATURES) & HVG_RING_FEAT_PENDING_SEND_SZ))
        return 0;
    u32 pending = load(ring, PENDING) & ~7u;
    if (pending == 0)
        return 0;
    u32 w = load(ring, W_INDEX);
    if (w >= ring->dsize || w % 8u)
        return 0; /* reported by the next call */
    u32 free_now = ring->dsize - used(ring, w, ring->cursor);
    u32 free_before = free_now > consumed ? free_now - consumed : 0;
    return free_before <= pending && pending < free_now;
}
