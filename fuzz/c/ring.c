/* libFuzzer harness for the native ring primitives: a ring whose control page and data area are
 * all attacker bytes (a guest owns both), read in batches, then written to, as the parent does.
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
    free(out);
    free(ring);
    return 0;
}
