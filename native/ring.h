/* ring.h: the VMBus ring buffer layout (Hyper-V's, byte for byte) and the C fast path that
 * moves batches of packets in and out of a ring held in one contiguous buffer.
 *
 * Source of the layout and the rules: ../shared/reference/hyperv-abi.md §4. All fields are
 * little-endian. This header stands alone (it is included by hvsim.h next to the core, but needs
 * nothing from it); native/api/ring.h repeats the declarations Python calls, for cffi.
 *
 * A ring is a 4096-byte control page followed by the data area:
 *
 *   control page                         data area (dsize = ring length - 4096)
 *   0 write_index  u32 (producer)        packets back to back, wrapping at dsize:
 *   4 read_index   u32 (consumer)          descriptor (16) | payload | zero pad to 8 | trailer (8)
 *   8 interrupt_mask u32 (consumer)      descriptor: type u16, offset8 u16, len8 u16, flags u16,
 *  12 pending_send_sz u32 (producer)                 trans_id u64
 *  64 feature_bits u32 (producer)        trailer:    u64 = (packet start offset) << 32
 *
 * Invariants a valid ring keeps: both indices are multiples of 8 and < dsize; write_index ==
 * read_index means empty, and a writer never makes them equal by writing, so at least 8 bytes
 * always stay free (usable space = dsize - 8).
 */
#ifndef HV_RING_H
#define HV_RING_H

#include <stddef.h>
#include <stdint.h>

/* ---- Control page ------------------------------------------------------------------------ */
#define HV_RING_CONTROL_SIZE        4096u
#define HV_RING_OFF_WRITE_INDEX     0u
#define HV_RING_OFF_READ_INDEX      4u
#define HV_RING_OFF_INTERRUPT_MASK  8u
#define HV_RING_OFF_PENDING_SEND_SZ 12u
#define HV_RING_OFF_FEATURE_BITS    64u
#define HV_RING_FEAT_PENDING_SEND_SZ 1u /* feature_bits bit 0 */

/* ---- Packets ----------------------------------------------------------------------------- */
#define HV_RING_DESC_SIZE    16u
#define HV_RING_TRAILER_SIZE 8u
#define HV_RING_ALIGN        8u
#define HV_RING_PKT_DATA_INBAND 6u
#define HV_RING_FLAG_COMPLETION_REQUESTED 1u

/* Data-area sizes this code accepts: a multiple of 8 from 32 bytes (room for the smallest
 * packet, 24 bytes, plus the 8 that always stay free) up to 2 GiB (so that index + packet
 * length never overflows a u32). Hyper-V maps whole pages; the channel layer enforces that. */
#define HV_RING_MIN_DATA_SIZE 32u
#define HV_RING_MAX_DATA_SIZE 0x80000000u

/* ---- Error codes: calls return the negated code ------------------------------------------ */
#define HV_RING_EINVAL            1 /* bad arguments: ring length, null pointers, count */
#define HV_RING_EMSGSIZE          2 /* a payload can never fit in this ring (nothing written) */
#define HV_RING_EBAD_WRITE_INDEX  3 /* write_index unaligned or >= data size */
#define HV_RING_EBAD_READ_INDEX   4 /* read_index unaligned or >= data size */
#define HV_RING_EBAD_DESCRIPTOR   5 /* offset8 < 2 or offset8 > len8 */
#define HV_RING_ETRUNCATED        6 /* packet + trailer longer than the bytes available */
#define HV_RING_ETAMPERED         7 /* the index this end owns is not the one it published */

/* Why hv_ring_read_batch stopped. */
#define HV_RING_STOP_EMPTY    0 /* no more packets */
#define HV_RING_STOP_MAX      1 /* max_packets reached */
#define HV_RING_STOP_OUT_FULL 2 /* the next packet does not fit in what is left of `out` */
#define HV_RING_STOP_CORRUPT  3 /* the next packet is corrupt; the next call returns the error */

/* What one batch call did (all fields are outputs). */
struct hv_ring_result {
    uint32_t signal;   /* 1: the peer must be signalled (writer: empty -> non-empty and
                          interrupt_mask clear; reader: pending_send_sz transition) */
    uint32_t index;    /* the index this call left published (new write_index / read_index) */
    uint32_t out_used; /* read: bytes of `out` filled with packet records */
    uint32_t stop;     /* read: HV_RING_STOP_* */
};

_Static_assert(sizeof(struct hv_ring_result) == 16, "hv_ring_result is four u32");
_Static_assert(HV_RING_OFF_FEATURE_BITS + 4 <= HV_RING_CONTROL_SIZE, "fields fit the control page");
_Static_assert(HV_RING_DESC_SIZE + HV_RING_TRAILER_SIZE + HV_RING_ALIGN <= HV_RING_MIN_DATA_SIZE,
               "the smallest ring holds the smallest packet");
_Static_assert(HV_RING_MAX_DATA_SIZE <= UINT32_MAX / 2 + 1, "index + packet length fits a u32");

/* Append payloads[...] (back to back, lengths[i] bytes each, unpadded) as `count` packets of
 * `type`/`flags`, trans_id trans_ids[i] (0 when trans_ids is NULL). Returns how many were
 * written (stopping at the first that does not fit) or -HV_RING_E*; publishes write_index once. */
int hv_ring_write_batch(uint8_t *ring, size_t ring_len,
                        const uint8_t *payloads, const uint32_t *lengths, uint32_t count,
                        uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                        struct hv_ring_result *result);

/* hv_ring_write_batch that also checks the gathered payloads hold payloads_len bytes, the sum of
 * the lengths (-HV_RING_EINVAL, nothing written, otherwise): a caller that joined its payloads
 * need not add the lengths up itself. */
int hv_ring_write_gathered(uint8_t *ring, size_t ring_len,
                           const uint8_t *payloads, uint64_t payloads_len, const uint32_t *lengths,
                           uint32_t count, uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                           struct hv_ring_result *result);

/* hv_ring_write_batch with payload i at payloads[i] (no need to gather them first). */
int hv_ring_write_batchv(uint8_t *ring, size_t ring_len,
                         const uint8_t *const *payloads, const uint32_t *lengths, uint32_t count,
                         uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                         struct hv_ring_result *result);

/* Append one packet: descriptor, header (header_len bytes, a multiple of 8, counted in offset8
 * like a GPA-direct range list), payload. Returns 1, 0 if it does not fit now, or -HV_RING_E*. */
int hv_ring_write_packet(uint8_t *ring, size_t ring_len, const uint8_t *header,
                         uint32_t header_len, const uint8_t *payload, uint32_t len,
                         uint16_t type, uint16_t flags, uint64_t trans_id,
                         struct hv_ring_result *result);

/* Copy up to max_packets packets out into `out` as records (each record = the packet exactly as
 * it sits in the ring, descriptor included, trailer excluded: len8 * 8 bytes, 8-aligned, back to
 * back). Returns how many or -HV_RING_E*; publishes read_index once. */
int hv_ring_read_batch(uint8_t *ring, size_t ring_len, uint8_t *out, size_t out_cap,
                       uint32_t max_packets, struct hv_ring_result *result);

/* The one-packet calls of a channel end (vmbus/channel.py's send and receive). `span` holds
 * the ring and the reader's records buffer, set up once per ring, so a call converts few
 * arguments; the end passes `own`, the index it published last, and the call refuses
 * (-HV_RING_ETAMPERED, nothing done) if the ring's copy differs. On any refusal nothing changed
 * and the caller takes the general path, which names the error. Both do exactly what
 * hv_ring_write_packet / hv_ring_read_batch do. */
struct hv_ring_span {
    uint8_t *ring;     /* control page + data area */
    uint64_t ring_len;
    uint8_t *out;      /* hv_ring_receive's records go here */
    uint32_t out_cap;  /* <= HV_RING_RECEIVE_MAX_OUT */
    uint32_t reserved;
};

/* Append one in-band packet (type 6, no flags, trans_id 0): returns
 * (new write_index << 2) | (signal << 1) | 1, 0 if it does not fit now, or -HV_RING_E*. */
int64_t hv_ring_send(const struct hv_ring_span *span, uint32_t own, const uint8_t *payload,
                     uint32_t len);

/* Read up to max_packets (<= HV_RING_RECEIVE_MAX_PACKETS) packets into span->out as
 * hv_ring_read_batch's records: returns count | signal << 16 | stop << 17 | out_used << 19 |
 * (read_index left published) << 32, or -HV_RING_E*. */
#define HV_RING_RECEIVE_MAX_OUT     8191u
#define HV_RING_RECEIVE_MAX_PACKETS 0xFFFFu
int64_t hv_ring_receive(const struct hv_ring_span *span, uint32_t own, uint32_t max_packets);

#endif
