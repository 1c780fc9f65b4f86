/* ring.c: batched packet copies into and out of a VMBus ring (layout and rules in ring.h).
 *
 * The point of this file is batching: Python pays one call and one index publish per batch
 * instead of per packet (cost model §4). Behaviour matches vmbus/ring.py, the pure-Python
 * reference, check for check and in the same order, so the two can be tested against each other.
 *
 * The peer owns half of the control page and may write anything there at any time, so:
 *  - every shared field is loaded once per use into a local, validated, and only the local is
 *    used afterwards (no double fetch);
 *  - a descriptor is copied out before it is checked, and the record handed back is built from
 *    that checked copy;
 *  - every access is inside [ring, ring + ring_len): positions are < dsize and copies longer than
 *    the distance to the end of the data area are split at the wrap.
 * Loads and stores are fixed-size memcpy to or from a local, swapped on big-endian hosts: the
 * layout is little-endian whatever the host, a memcpy is never an unaligned (undefined) access,
 * and compilers turn each into one move. (A byte-by-byte loop is not always merged: GCC 12 at
 * -O2 stored the descriptor and trailer a byte at a time, a sixth of a 64-byte packet's cost.)
 *
 * N.B. hvsim runs in one thread, so no memory barriers are needed; the comments mark where a
 * concurrent implementation (Linux hv_ringbuffer_write, hv_pkt_iter_close) puts them.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "ring.h"

/* Host byte order <-> little-endian (a no-op on little-endian hosts). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LE16(v) __builtin_bswap16(v)
#define LE32(v) __builtin_bswap32(v)
#define LE64(v) __builtin_bswap64(v)
#else
#define LE16(v) (v)
#define LE32(v) (v)
#define LE64(v) (v)
#endif

static uint16_t get_le16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return LE16(v);
}

static uint32_t get_le32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return LE32(v);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    v = LE32(v);
    memcpy(p, &v, sizeof v);
}

static void put_le64(uint8_t *p, uint64_t v)
{
    v = LE64(v);
    memcpy(p, &v, sizeof v);
}

/* One ring, decoded from (buffer, length). */
struct ring_view {
    uint8_t *ctl;   /* control page */
    uint8_t *data;  /* data area */
    uint32_t dsize; /* data area size: multiple of 8 in [MIN_DATA_SIZE, MAX_DATA_SIZE] */
};

static int view_init(struct ring_view *v, uint8_t *ring, size_t ring_len)
{
    if (ring == NULL || ring_len < HV_RING_CONTROL_SIZE)
        return -HV_RING_EINVAL;
    size_t dsize = ring_len - HV_RING_CONTROL_SIZE;
    if (dsize < HV_RING_MIN_DATA_SIZE || dsize > HV_RING_MAX_DATA_SIZE || dsize % HV_RING_ALIGN)
        return -HV_RING_EINVAL;
    v->ctl = ring;
    v->data = ring + HV_RING_CONTROL_SIZE;
    v->dsize = (uint32_t)dsize;
    return 0;
}

static int index_valid(const struct ring_view *v, uint32_t index)
{
    return index < v->dsize && index % HV_RING_ALIGN == 0;
}

/* Bytes published and not yet consumed, for valid indices. */
static uint32_t bytes_used(const struct ring_view *v, uint32_t w, uint32_t r)
{
    return w >= r ? w - r : v->dsize - r + w;
}

/* pos < dsize, n <= dsize  ->  result < dsize (no u32 overflow: dsize <= 2^31). */
static uint32_t advance(const struct ring_view *v, uint32_t pos, uint32_t n)
{
    pos += n;
    return pos >= v->dsize ? pos - v->dsize : pos;
}

/* Copy n (<= dsize) bytes to/from the data area starting at pos (< dsize), wrapping once. */
static void copy_in(const struct ring_view *v, uint32_t pos, const uint8_t *src, uint32_t n)
{
    uint32_t first = v->dsize - pos < n ? v->dsize - pos : n;
    if (first)
        memcpy(v->data + pos, src, first);
    if (n > first)
        memcpy(v->data, src + first, n - first);
}

static void copy_out(const struct ring_view *v, uint32_t pos, uint8_t *dst, uint32_t n)
{
    uint32_t first = v->dsize - pos < n ? v->dsize - pos : n;
    if (first)
        memcpy(dst, v->data + pos, first);
    if (n > first)
        memcpy(dst + first, v->data, n - first);
}

/* Total ring bytes of a packet with `len` payload bytes: descriptor + padded payload + trailer.
 * 0 if it can never fit this ring (len8 is a u16; at most dsize - 8 bytes are usable). */
static uint32_t packet_total(const struct ring_view *v, uint32_t len)
{
    uint64_t padded = ((uint64_t)len + HV_RING_ALIGN - 1) & ~(uint64_t)(HV_RING_ALIGN - 1);
    uint64_t body = HV_RING_DESC_SIZE + padded;
    uint64_t total = body + HV_RING_TRAILER_SIZE;
    if (body / HV_RING_ALIGN > UINT16_MAX || total > v->dsize - HV_RING_ALIGN)
        return 0;
    return (uint32_t)total;
}

/* A descriptor (type, offset8, len8, flags: four u16, then trans_id) as two 64-bit words, for a
 * packet with an `hlen`-byte header and a `body`-byte packet (trailer excluded). */
static void put_desc(uint8_t *p, uint16_t type, uint32_t hlen, uint32_t body, uint16_t flags,
                     uint64_t trans_id)
{
    put_le64(p, (uint64_t)type | (uint64_t)((HV_RING_DESC_SIZE + hlen) / HV_RING_ALIGN) << 16 |
                    (uint64_t)(body / HV_RING_ALIGN) << 32 | (uint64_t)flags << 48);
    put_le64(p + 8, trans_id);
}

/* Write one packet at w (free space already checked): descriptor, header (hlen, a multiple of
 * 8), payload, zero padding, trailer. `total` is packet_total(hlen + len). */
static void put_packet(const struct ring_view *v, uint32_t w, uint32_t total, uint16_t type,
                       uint16_t flags, uint64_t trans_id, const uint8_t *header, uint32_t hlen,
                       const uint8_t *payload, uint32_t len)
{
    uint32_t body = total - HV_RING_TRAILER_SIZE;
    uint32_t pad = body - HV_RING_DESC_SIZE - hlen - len;
    if (total <= v->dsize - w) {
        /* The common case, no wrap: build the packet in place (same bytes as below). The
         * descriptor is two 64-bit words; the padding is cleared by zeroing the body's last
         * word before the payload is copied over its start (pad > 0 implies len + pad >= 8, so
         * that word lies past the descriptor and the header). */
        uint8_t *p = v->data + w;
        put_desc(p, type, hlen, body, flags, trans_id);
        if (pad)
            put_le64(p + body - HV_RING_ALIGN, 0);
        if (hlen)
            memcpy(p + HV_RING_DESC_SIZE, header, hlen);
        if (len)
            memcpy(p + HV_RING_DESC_SIZE + hlen, payload, len);
        put_le64(p + body, (uint64_t)w << 32);
        return;
    }
    uint8_t desc[HV_RING_DESC_SIZE];
    put_desc(desc, type, hlen, body, flags, trans_id);

    /* Zero padding then the trailer: the packet's start offset in the upper 32 bits. */
    uint8_t tail[HV_RING_ALIGN + HV_RING_TRAILER_SIZE] = {0};
    put_le64(tail + pad, (uint64_t)w << 32);

    uint32_t pos = w;
    copy_in(v, pos, desc, HV_RING_DESC_SIZE);
    pos = advance(v, pos, HV_RING_DESC_SIZE);
    if (hlen) {
        copy_in(v, pos, header, hlen);
        pos = advance(v, pos, hlen);
    }
    if (len) {
        copy_in(v, pos, payload, len);
        pos = advance(v, pos, len);
    }
    copy_in(v, pos, tail, pad + HV_RING_TRAILER_SIZE);
}

/* Load and validate both indices for a writer: own index first, then the peer's (the same
 * order as the Python writer). */
static int writer_indices(const struct ring_view *v, uint32_t *w, uint32_t *r)
{
    *w = get_le32(v->ctl + HV_RING_OFF_WRITE_INDEX);
    *r = get_le32(v->ctl + HV_RING_OFF_READ_INDEX);
    if (!index_valid(v, *w))
        return -HV_RING_EBAD_WRITE_INDEX;
    if (!index_valid(v, *r))
        return -HV_RING_EBAD_READ_INDEX;
    return 0;
}

/* After n > 0 packets: publish write_index once and decide the signal. */
static void writer_publish(const struct ring_view *v, uint32_t old_w, uint32_t w,
                           struct hv_ring_result *result)
{
    /* (barrier: packet bytes before the index) One publish for the whole batch. */
    put_le32(v->ctl + HV_RING_OFF_WRITE_INDEX, w);
    result->index = w;

    /* (full barrier) Signal only on empty -> non-empty, and only if the reader has not masked
     * interrupts. read_index is loaded again after publishing: a reader that drained the ring
     * meanwhile and went idle must still be woken. */
    uint32_t mask = get_le32(v->ctl + HV_RING_OFF_INTERRUPT_MASK);
    uint32_t r_now = get_le32(v->ctl + HV_RING_OFF_READ_INDEX);
    result->signal = mask == 0 && r_now == old_w;
}

/* The batch writers: payload i is vec[i] if vec is not NULL, else the next lengths[i] bytes of
 * `payloads`, which holds payloads_len bytes (UNCHECKED: as many as the lengths add up to). */
#define UNCHECKED UINT64_MAX
static int write_batch(uint8_t *ring, size_t ring_len, const uint8_t *payloads, uint64_t payloads_len,
                       const uint8_t *const *vec, const uint32_t *lengths, uint32_t count,
                       uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                       struct hv_ring_result *result)
{
    struct ring_view v;
    int rc = view_init(&v, ring, ring_len);
    if (rc)
        return rc;
    if (result == NULL || count > INT32_MAX || (count && lengths == NULL))
        return -HV_RING_EINVAL;
    memset(result, 0, sizeof *result);

    /* Decode: every packet must be able to fit at all, and the payload pointer must exist if any
     * byte is to be read from it; otherwise nothing is written. */
    uint64_t payload_bytes = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (packet_total(&v, lengths[i]) == 0)
            return -HV_RING_EMSGSIZE;
        payload_bytes += lengths[i];
        if (vec != NULL && lengths[i] && vec[i] == NULL)
            return -HV_RING_EINVAL;
    }
    if (payload_bytes && vec == NULL && payloads == NULL)
        return -HV_RING_EINVAL;
    if (vec == NULL && payloads_len != UNCHECKED && payload_bytes != payloads_len)
        return -HV_RING_EINVAL;

    uint32_t old_w, r;
    rc = writer_indices(&v, &old_w, &r);
    if (rc)
        return rc;
    result->index = old_w;

    /* A packet fits only if free > total, so the writer never makes w == r (8 bytes stay free).
     * A read_index the peer moved backwards or past w just shows as less free space. */
    uint32_t free_bytes = v.dsize - bytes_used(&v, old_w, r);
    uint32_t w = old_w;
    uint32_t n = 0;
    for (; n < count; n++) {
        uint32_t len = lengths[n];
        uint32_t total = packet_total(&v, len);
        if (free_bytes <= total)
            break;
        const uint8_t *src = vec != NULL ? vec[n] : payloads;
        put_packet(&v, w, total, type, flags, trans_ids ? trans_ids[n] : 0, NULL, 0, src, len);
        if (vec == NULL)
            payloads += len;
        w = advance(&v, w, total);
        free_bytes -= total;
    }
    if (n == 0)
        return 0;
    writer_publish(&v, old_w, w, result);
    return (int)n;
}

int hv_ring_write_batch(uint8_t *ring, size_t ring_len,
                        const uint8_t *payloads, const uint32_t *lengths, uint32_t count,
                        uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                        struct hv_ring_result *result)
{
    return write_batch(ring, ring_len, payloads, UNCHECKED, NULL, lengths, count, type, flags,
                       trans_ids, result);
}

int hv_ring_write_gathered(uint8_t *ring, size_t ring_len,
                           const uint8_t *payloads, uint64_t payloads_len, const uint32_t *lengths,
                           uint32_t count, uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                           struct hv_ring_result *result)
{
    if (payloads_len == UNCHECKED)
        return -HV_RING_EINVAL;
    return write_batch(ring, ring_len, payloads, payloads_len, NULL, lengths, count, type, flags,
                       trans_ids, result);
}

int hv_ring_write_batchv(uint8_t *ring, size_t ring_len,
                         const uint8_t *const *payloads, const uint32_t *lengths, uint32_t count,
                         uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                         struct hv_ring_result *result)
{
    if (count && payloads == NULL)
        return -HV_RING_EINVAL;
    return write_batch(ring, ring_len, NULL, UNCHECKED, count ? payloads : NULL, lengths, count,
                       type, flags, trans_ids, result);
}

/* Write one packet of `total` ring bytes (packet_total, not 0) if it fits now: 1, 0 if it does
 * not, or -HV_RING_E*. `own` is the write_index the caller published last (it must be the
 * ring's, else -HV_RING_ETAMPERED and nothing is written), or ANY_OWN. */
#define ANY_OWN UINT64_MAX
static int write_one(const struct ring_view *v, uint64_t own, uint32_t total, uint16_t type,
                     uint16_t flags, uint64_t trans_id, const uint8_t *header, uint32_t hlen,
                     const uint8_t *payload, uint32_t len, struct hv_ring_result *result)
{
    uint32_t w, r;
    int rc = writer_indices(v, &w, &r);
    if (rc)
        return rc;
    if (own != ANY_OWN && w != own)
        return -HV_RING_ETAMPERED;
    result->index = w;
    if (v->dsize - bytes_used(v, w, r) <= total)
        return 0;
    put_packet(v, w, total, type, flags, trans_id, header, hlen, payload, len);
    writer_publish(v, w, advance(v, w, total), result);
    return 1;
}

int hv_ring_write_packet(uint8_t *ring, size_t ring_len, const uint8_t *header,
                         uint32_t header_len, const uint8_t *payload, uint32_t len,
                         uint16_t type, uint16_t flags, uint64_t trans_id,
                         struct hv_ring_result *result)
{
    struct ring_view v;
    int rc = view_init(&v, ring, ring_len);
    if (rc)
        return rc;
    if (result == NULL || header_len % HV_RING_ALIGN || (header_len && header == NULL)
        || (len && payload == NULL) || len > UINT32_MAX - header_len)
        return -HV_RING_EINVAL;
    memset(result, 0, sizeof *result);
    uint32_t total = packet_total(&v, header_len + len);
    if (total == 0)
        return -HV_RING_EMSGSIZE;
    return write_one(&v, ANY_OWN, total, type, flags, trans_id, header, header_len, payload, len,
                     result);
}

/* Whether a reader that consumed `bytes_read` bytes, leaving read_index at r, must signal the
 * writer: only if the writer asked (feature bit and pending_send_sz) and free space crossed
 * pending_send_sz with this batch (free before <= pending < free now). pending is masked to 8
 * as OpenVMM does (some peers set ring size - 1); free space is always a multiple of 8, so the
 * mask changes no outcome. */
static uint32_t reader_signal(const struct ring_view *v, uint32_t r, uint32_t bytes_read)
{
    uint32_t features = get_le32(v->ctl + HV_RING_OFF_FEATURE_BITS);
    uint32_t pending = get_le32(v->ctl + HV_RING_OFF_PENDING_SEND_SZ);
    pending &= ~(uint32_t)(HV_RING_ALIGN - 1);
    if (!(features & HV_RING_FEAT_PENDING_SEND_SZ) || pending == 0)
        return 0;
    /* (full barrier) write_index again: the writer may have appended since the batch began. An
     * invalid one is left for the next call to report. */
    uint32_t w = get_le32(v->ctl + HV_RING_OFF_WRITE_INDEX);
    if (!index_valid(v, w))
        return 0;
    uint32_t free_now = v->dsize - bytes_used(v, w, r);
    uint32_t free_before = free_now >= bytes_read ? free_now - bytes_read : 0;
    return free_before <= pending && free_now > pending;
}

/* hv_ring_read_batch from read_index r, loaded once by the caller (and not yet validated). */
static int read_from(const struct ring_view *vp, uint32_t r, uint8_t *out, size_t out_cap,
                     uint32_t max_packets, struct hv_ring_result *result)
{
    const struct ring_view v = *vp;
    memset(result, 0, sizeof *result);

    /* Own index first (the caller loaded it), then the peer's: the same order as the Python
     * reader. */
    uint32_t w = get_le32(v.ctl + HV_RING_OFF_WRITE_INDEX);
    if (!index_valid(&v, r))
        return -HV_RING_EBAD_READ_INDEX;
    if (!index_valid(&v, w))
        return -HV_RING_EBAD_WRITE_INDEX;
    result->index = r;

    uint32_t pos = r;
    size_t used = 0;
    uint32_t n = 0;
    int err = 0;
    result->stop = HV_RING_STOP_MAX;
    for (; n < max_packets; n++) {
        uint32_t avail = bytes_used(&v, w, pos);
        if (avail == 0) {
            result->stop = HV_RING_STOP_EMPTY;
            break;
        }
        if (avail < HV_RING_DESC_SIZE + HV_RING_TRAILER_SIZE) {
            err = HV_RING_ETRUNCATED;
            break;
        }
        uint8_t desc[HV_RING_DESC_SIZE]; /* the one snapshot every check and the record use */
        if (v.dsize - pos >= HV_RING_DESC_SIZE)
            memcpy(desc, v.data + pos, HV_RING_DESC_SIZE); /* no wrap: two loads */
        else
            copy_out(&v, pos, desc, HV_RING_DESC_SIZE);
        uint32_t offset8 = get_le16(desc + 2);
        uint32_t len8 = get_le16(desc + 4);
        if (offset8 < HV_RING_DESC_SIZE / HV_RING_ALIGN || offset8 > len8) {
            err = HV_RING_EBAD_DESCRIPTOR;
            break;
        }
        uint32_t len = len8 * HV_RING_ALIGN; /* <= 524280, no overflow */
        if ((uint64_t)len + HV_RING_TRAILER_SIZE > avail) {
            err = HV_RING_ETRUNCATED;
            break;
        }
        if (len > out_cap - used) {
            result->stop = HV_RING_STOP_OUT_FULL;
            break;
        }
        memcpy(out + used, desc, HV_RING_DESC_SIZE);
        if (v.dsize - pos >= len) /* no wrap: one copy of the rest */
            memcpy(out + used + HV_RING_DESC_SIZE, v.data + pos + HV_RING_DESC_SIZE,
                   len - HV_RING_DESC_SIZE);
        else
            copy_out(&v, advance(&v, pos, HV_RING_DESC_SIZE), out + used + HV_RING_DESC_SIZE,
                     len - HV_RING_DESC_SIZE);
        used += len;
        pos = advance(&v, pos, len + HV_RING_TRAILER_SIZE);
    }

    /* A corrupt packet is reported as an error only when it is the first one; packets before it
     * were good and are delivered, and the next call, starting at the corrupt one, fails. */
    if (err) {
        if (n == 0)
            return -err;
        result->stop = HV_RING_STOP_CORRUPT;
    }
    result->out_used = (uint32_t)used;
    if (n == 0)
        return 0;

    /* (read barrier) One publish for the whole batch. */
    put_le32(v.ctl + HV_RING_OFF_READ_INDEX, pos);
    result->index = pos;
    result->signal = reader_signal(&v, pos, (uint32_t)used + n * HV_RING_TRAILER_SIZE);
    return (int)n;
}

int hv_ring_read_batch(uint8_t *ring, size_t ring_len, uint8_t *out, size_t out_cap,
                       uint32_t max_packets, struct hv_ring_result *result)
{
    struct ring_view v;
    int rc = view_init(&v, ring, ring_len);
    if (rc)
        return rc;
    if (result == NULL || max_packets > INT32_MAX || (out == NULL && out_cap))
        return -HV_RING_EINVAL;
    return read_from(&v, get_le32(v.ctl + HV_RING_OFF_READ_INDEX), out, out_cap, max_packets,
                     result);
}

/* ---- One packet per call (a channel end that remembers the index it published) ---------- */

static int span_view(struct ring_view *v, const struct hv_ring_span *span)
{
    return span == NULL ? -HV_RING_EINVAL : view_init(v, span->ring, span->ring_len);
}

int64_t hv_ring_send(const struct hv_ring_span *span, uint32_t own, const uint8_t *payload,
                     uint32_t len)
{
    struct ring_view v;
    int rc = span_view(&v, span);
    if (rc)
        return rc;
    if (len && payload == NULL)
        return -HV_RING_EINVAL;
    uint32_t total = packet_total(&v, len);
    if (total == 0)
        return -HV_RING_EMSGSIZE;
    struct hv_ring_result result = {0};
    rc = write_one(&v, own, total, HV_RING_PKT_DATA_INBAND, 0, 0, NULL, 0, payload, len, &result);
    if (rc <= 0)
        return rc;
    return (int64_t)result.index << 2 | (int64_t)result.signal << 1 | 1;
}

int64_t hv_ring_receive(const struct hv_ring_span *span, uint32_t own, uint32_t max_packets)
{
    struct ring_view v;
    int rc = span_view(&v, span);
    if (rc)
        return rc;
    uint8_t *out = span->out;
    uint32_t out_cap = span->out_cap;
    if (out_cap > HV_RING_RECEIVE_MAX_OUT || max_packets > HV_RING_RECEIVE_MAX_PACKETS ||
        (out == NULL && out_cap))
        return -HV_RING_EINVAL;
    uint32_t r = get_le32(v.ctl + HV_RING_OFF_READ_INDEX);
    if (r != own)
        return -HV_RING_ETAMPERED;
    struct hv_ring_result result;
    rc = read_from(&v, r, out, out_cap, max_packets, &result);
    if (rc < 0)
        return rc;
    return (int64_t)rc | (int64_t)result.signal << 16 | (int64_t)result.stop << 17 |
           (int64_t)result.out_used << 19 | (int64_t)result.index << 32;
}
