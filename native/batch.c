/* batch.c: many hypercalls in one crossing from Python. Each goes through hv_hypercall, the one
 * entry point, exactly as if the VP had executed them one after another; only the Python->C
 * transition is shared. Used by bulk callers (the VM worker building a partition, benchmarks). */
#include "core.h"

uint32_t hv_hypercall_batch(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t count,
                            const uint64_t *controls, const uint64_t *in_args, const uint64_t *out_args,
                            uint64_t *results, int stop_on_error)
{
    uint32_t i;
    for (i = 0; i < count; i++) {
        results[i] = hv_hypercall(h, partition_id, vp_index, controls[i], in_args[i], out_args[i], NULL);
        if (stop_on_error && (results[i] & 0xFFFF) != HV_STATUS_SUCCESS)
            return i + 1;
    }
    return i;
}

void hv_nop(void) {}
