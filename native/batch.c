/* batch.c: hypercalls from Python at the cost of one crossing. hv_hypercall_batch runs many
 * prepared hypercalls in one crossing; hv_hypercall_frame runs one and copies its output block
 * out in the same crossing (VirtualProcessor.hypercall's path). Each goes through hv_hypercall,
 * the one entry point, exactly as if the VP had executed them one after another; only the
 * Python->C transition is shared. Used by bulk callers (the VM worker building a partition,
 * benchmarks) and by every typed hypercall wrapper. */
#include <string.h>

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

/* Read the output block as the caller's loads see it (the overlay where it covers the page). A
 * block that lies in one page, as every successful call's does, takes one translation; any
 * other the general guest read. True if every byte was readable. */
static bool read_output(struct hv_host *h, uint64_t partition_id, uint64_t gpa, uint8_t *buf, uint64_t len)
{
    uint64_t off = gpa & (HV_PAGE_SIZE - 1), pfn;
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    if (p == NULL || off + len > HV_PAGE_SIZE)
        return hv_partition_read(h, partition_id, gpa, buf, len) == 0;
    if (!hv_gpa_translate(h, p, gpa >> HV_PAGE_SHIFT, HV_MAP_GPA_READABLE, &pfn))
        return false;
    if (hv_overlay_covers(p, gpa >> HV_PAGE_SHIFT))
        hv_overlay_read(off, buf, len);
    else
        memcpy(buf, hv_spa_page(h, pfn) + off, len);
    return true;
}

uint64_t hv_hypercall_frame(struct hv_call_frame *f, uint64_t control)
{
    return hv_hypercall_frame_at(f, control, f->in_gpa, f->out_gpa);
}

uint64_t hv_hypercall_frame_at(struct hv_call_frame *f, uint64_t control, uint64_t in_arg, uint64_t out_arg)
{
    uint64_t raw = hv_hypercall(f->h, f->partition_id, f->vp_index, control, in_arg, out_arg, NULL);
    /* The output block is what the caller reads from its output page after a successful memory
     * call: the call's fixed output plus one element per rep asked for, rounded to 8 bytes (the
     * same length the Python path reads). A fast call has no output page. */
    uint64_t len = 0;
    const struct hv_call_desc *d = hv_call_lookup((uint16_t)(control & HV_CTL_CALL_CODE_MASK));
    if ((raw & 0xFFFF) == HV_STATUS_SUCCESS && !(control & HV_CTL_FAST) && d) {
        uint64_t reps = (control & HV_CTL_REP_COUNT_MASK) >> HV_CTL_REP_COUNT_SHIFT;
        len = (d->out_size + reps * d->out_elem_size + 7) & ~7ull;
    }
    uint8_t block[sizeof f->out];
    if (len > sizeof f->out) {
        f->last = UINT64_MAX; /* a result that no call returns: the next one is new */
        return raw | ((uint64_t)HV_FRAME_OUT_UNREAD << HV_FRAME_OUT_SHIFT);
    }
    if (len && !read_output(f->h, f->partition_id, out_arg, block, len))
        len = 0; /* an unreadable output page reads as no output, as on the Python path */
    raw |= len << HV_FRAME_OUT_SHIFT;
    /* The same status, reps and output bytes as this frame's previous call: say so, and the
     * caller may hand out its previous (immutable) result again. */
    bool same = raw == f->last && memcmp(block, f->out, len) == 0;
    memcpy(f->out, block, len);
    f->last = raw;
    return same ? raw | HV_FRAME_SAME : raw;
}

uint64_t hv_nop_hypercall(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint64_t control,
                          uint64_t in_arg, uint64_t out_arg, const uint64_t *xmm)
{
    (void)h, (void)partition_id, (void)vp_index, (void)control, (void)in_arg, (void)out_arg, (void)xmm;
    return 0;
}

void hv_nop(void) {}

void hv_bench_memcpy(uint8_t *dst, const uint8_t *src, size_t size, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        memcpy(dst + (size_t)i * size, src + (size_t)i * size, size);
}
