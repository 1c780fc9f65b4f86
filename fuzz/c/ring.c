/* libFuzzer harness for the native ring primitives: a ring whose control page and data area are
 * all attacker bytes (a guest owns both), read in batches, then written to, as the parent does;
 * then the same through a channel end's one-packet calls (hv_ring_send / hv_ring_receive).
 *
 * Input: size:u8  max_packets:u8  out_cap:u16  control[16]  feature:u8  then the data area.
 * The data area is 32..4096 bytes (a multiple of 8: `size`), zero-filled past the input. Every
 * packet record the reader returns must lie inside `out`, and what it reports must be consistent
 * (out_used <= out_cap, a published index < data size and 8-aligned); the sanitizers catch the rest.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ring.h"

#define MAX_DATA 4096u

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 21)
        return 0;
    uint32_t dsize = HV_RING_MIN_DATA_SIZE + (uint32_t)data[0] % ((MAX_DATA - HV_RING_MIN_DATA_SIZE) / 8 + 1) * 8;
    uint32_t max_packets = data[1];
    uint32_t out_cap = (uint32_t)(data[2] | data[3] << 8);
    size_t ring_len = HV_RING_CONTROL_SIZE + dsize;
    /* exact-size heap buffers: ASan sees any byte read or written past them */
    uint8_t *ring = calloc(1, ring_len);
    uint8_t *out = malloc(out_cap ? out_cap : 1);
    if (!ring || !out)
        abort();
    memcpy(ring, data + 4, 16); /* write_index, read_index, interrupt_mask, pending_send_sz */
    ring[HV_RING_OFF_FEATURE_BITS] = data[20];
    size_t body = size - 21 < dsize ? size - 21 : dsize;
    memcpy(ring + HV_RING_CONTROL_SIZE, data + 21, body);

    for (int round = 0; round < 3; round++) {
        struct hv_ring_result r;
        int n = hv_ring_read_batch(ring, ring_len, out, out_cap, max_packets, &r);
        if (n < 0)
            break;
        if (r.out_used > out_cap || r.index >= dsize || r.index % 8)
            abort(); /* the reader reported something impossible */
        if (n == 0 && r.stop == HV_RING_STOP_EMPTY)
            break;
    }
    /* then the other direction on the same (possibly corrupt) ring */
    uint8_t payload[128]; /* both payloads, back to back */
    uint32_t lengths[2] = {data[3] % 64u, data[2] % 64u};
    memset(payload, 0xA5, sizeof payload);
    struct hv_ring_result w;
    hv_ring_write_batch(ring, ring_len, payload, lengths, 2, HV_RING_PKT_DATA_INBAND, 0, NULL, &w);
    hv_ring_write_gathered(ring, ring_len, payload, lengths[0] + lengths[1], lengths, 2,
                           HV_RING_PKT_DATA_INBAND, 0, NULL, &w);

    /* and the one-packet calls of a channel end, with `own` taken from the ring as an end that
     * adopted it would (and once from the input, as a stale one) */
    struct hv_ring_span span = {ring, ring_len, out, out_cap < HV_RING_RECEIVE_MAX_OUT ? out_cap : HV_RING_RECEIVE_MAX_OUT, 0};
    uint32_t own_w = (uint32_t)(ring[0] | ring[1] << 8 | ring[2] << 16 | (uint32_t)ring[3] << 24);
    int64_t sent = hv_ring_send(&span, own_w, payload, lengths[0]);
    if (sent > 0 && ((uint64_t)sent >> 2 >= dsize || ((uint64_t)sent >> 2) % 8))
        abort(); /* published an impossible write_index */
    hv_ring_send(&span, data[4], payload, lengths[1]);
    for (int round = 0; round < 3; round++) {
        uint32_t own_r = (uint32_t)(ring[4] | ring[5] << 8 | ring[6] << 16 | (uint32_t)ring[7] << 24);
        int64_t got = hv_ring_receive(&span, own_r, max_packets);
        if (got < 0)
            break;
        uint64_t used = (uint64_t)got >> 19 & 0x1FFF, index = (uint64_t)got >> 32;
        if (used > span.out_cap || index >= dsize || index % 8)
            abort(); /* the reader reported something impossible */
        if ((got & 0xFFFF) == 0)
            break;
    }
    free(out);
    free(ring);
    return 0;
}
