/* service.c: what the parent's VMBus service reads of its own SynIC pages on each pass (its SIM
 * slot's type and its SINTs' event flags), in one crossing instead of a read and a write per
 * SINT and a read of the slot. */
#include "core.h"
#include "api/service.h"

#define FLAG_BYTES 256   /* HV_EVENT_FLAGS_COUNT / 8: one SINT's flags in the SIEFP page */

int32_t hv_service_take(struct hv_host *h, uint64_t partition_id, uint64_t slot_gpa, uint64_t flags_gpa,
                        uint32_t sints, uint16_t *out, uint32_t cap, uint32_t *slot_type)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    uint32_t type = 0;
    if (!p || !hv_guest_read(h, p, slot_gpa, &type, sizeof type))
        return -1;
    *slot_type = type;
    static const uint8_t zeros[FLAG_BYTES];
    int32_t n = 0;
    for (uint32_t sint = 0; sint < 16; sint++) {
        if (!(sints >> sint & 1))
            continue;
        uint64_t words[FLAG_BYTES / 8];
        uint64_t gpa = flags_gpa + (uint64_t)sint * FLAG_BYTES;
        if (!hv_guest_read(h, p, gpa, words, FLAG_BYTES))
            return -1;
        bool any = false;
        for (uint32_t w = 0; w < FLAG_BYTES / 8; w++)
            any |= words[w] != 0;
        if (!any)
            continue;
        /* Taken all at once, as a guest's exchange of the whole array would: the simulation is
         * single-threaded, so no flag can be set between the read and this write. */
        if (!hv_guest_write(h, p, gpa, zeros, FLAG_BYTES))
            return -1;
        for (uint32_t w = 0; w < FLAG_BYTES / 8; w++) {
            for (uint64_t bits = words[w]; bits; bits &= bits - 1) {
                if ((uint32_t)n < cap)
                    out[n] = (uint16_t)(sint * 2048 + w * 64 + (uint32_t)__builtin_ctzll(bits));
                n++;
            }
        }
    }
    return n;
}
