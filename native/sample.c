/* sample.c: figures of many partitions read in one crossing, for owners that sample every
 * partition periodically (the management layer's CPU usage every 100 ms of simulated time). */
#include "core.h"

uint32_t hv_partitions_run_time(struct hv_host *h, const uint64_t *ids, uint32_t count, uint64_t *out)
{
    /* Each figure is hv_partition_info's, so the batch and the one-partition view can never
     * disagree; what the batch saves is the crossing and the Python dict per partition. */
    uint32_t found = 0;
    for (uint32_t i = 0; i < count; i++) {
        struct hv_partition_info info;
        if (hv_partition_info(h, ids[i], &info) == 0) {
            out[i] = info.run_time_ns;
            found++;
        } else {
            out[i] = UINT64_MAX;
        }
    }
    return found;
}
