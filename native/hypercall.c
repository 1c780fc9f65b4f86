/* hypercall.c: the one hypercall entry point: decode the control word, check the privilege,
 * copy the input block out of the caller's memory, run the handler, copy the output back.
 *
 * Order of checks (the TLFS asks that the least revealing status win): reserved bits and rep
 * encoding (INVALID_HYPERCALL_INPUT), the call code (INVALID_HYPERCALL_CODE), the privilege
 * (ACCESS_DENIED), then the input/output blocks (INVALID_ALIGNMENT), then the handler's own
 * argument checks. Handlers apply nothing until every check has passed, and the output block is
 * written back only on success, so a failed hypercall changes nothing.
 */
#include <string.h>

#include "core.h"

#define P(bit) HV_PRIV(bit)

/* One entry per call code, indexed by the code itself, so the entry point finds a call's
 * description in one load; a code with no handler (reserved, unknown, or past the table) is
 * HV_STATUS_INVALID_HYPERCALL_CODE. Every code hvsim implements is below HV_CALL_TABLE_SIZE (the
 * compiler refuses a designated index past the end).
 * name, privilege, header, in elem, out, out elem, rep, fast_ok, handler */
#define HV_CALL_TABLE_SIZE 0x100
static const struct hv_call_desc calls[HV_CALL_TABLE_SIZE] = {
    [HVCALL_CREATE_PARTITION] = {"CreatePartition", P(HV_PRIV_CREATE_PARTITIONS), 56, 0, 8, 0, false, false, hv_call_create_partition},
    [HVCALL_INITIALIZE_PARTITION] = {"InitializePartition", P(HV_PRIV_CREATE_PARTITIONS), 8, 0, 0, 0, false, true, hv_call_initialize_partition},
    [HVCALL_FINALIZE_PARTITION] = {"FinalizePartition", P(HV_PRIV_CREATE_PARTITIONS), 8, 0, 0, 0, false, true, hv_call_finalize_partition},
    [HVCALL_DELETE_PARTITION] = {"DeletePartition", P(HV_PRIV_CREATE_PARTITIONS), 8, 0, 0, 0, false, true, hv_call_delete_partition},
    [HVCALL_GET_PARTITION_PROPERTY] = {"GetPartitionProperty", 0, 16, 0, 8, 0, false, false, hv_call_get_partition_property},
    [HVCALL_SET_PARTITION_PROPERTY] = {"SetPartitionProperty", P(HV_PRIV_CREATE_PARTITIONS), 24, 0, 0, 0, false, true, hv_call_set_partition_property},
    [HVCALL_GET_PARTITION_ID] = {"GetPartitionId", P(HV_PRIV_ACCESS_PARTITION_ID), 0, 0, 8, 0, false, false, hv_call_get_partition_id},
    [HVCALL_GET_NEXT_CHILD_PARTITION] = {"GetNextChildPartition", P(HV_PRIV_CREATE_PARTITIONS), 16, 0, 8, 0, false, false, hv_call_get_next_child_partition},
    [HVCALL_DEPOSIT_MEMORY] = {"DepositMemory", P(HV_PRIV_ACCESS_MEMORY_POOL), 8, 8, 0, 0, true, false, hv_call_deposit_memory},
    [HVCALL_WITHDRAW_MEMORY] = {"WithdrawMemory", P(HV_PRIV_ACCESS_MEMORY_POOL), 16, 0, 0, 8, true, false, hv_call_withdraw_memory},
    [HVCALL_GET_MEMORY_BALANCE] = {"GetMemoryBalance", P(HV_PRIV_ACCESS_MEMORY_POOL), 16, 0, 16, 0, false, false, hv_call_get_memory_balance},
    [HVCALL_MAP_GPA_PAGES] = {"MapGpaPages", P(HV_PRIV_CREATE_PARTITIONS), 24, 8, 0, 0, true, false, hv_call_map_gpa_pages},
    [HVCALL_UNMAP_GPA_PAGES] = {"UnmapGpaPages", P(HV_PRIV_CREATE_PARTITIONS), 24, 0, 0, 0, true, false, hv_call_unmap_gpa_pages},
    [HVCALL_CREATE_VP] = {"CreateVp", P(HV_PRIV_CREATE_PARTITIONS), 32, 0, 0, 0, false, true, hv_call_create_vp},
    [HVCALL_DELETE_VP] = {"DeleteVp", P(HV_PRIV_CREATE_PARTITIONS), 16, 0, 0, 0, false, true, hv_call_delete_vp},
    [HVCALL_GET_VP_REGISTERS] = {"GetVpRegisters", 0, 16, 4, 0, 16, true, false, hv_call_get_vp_registers},
    [HVCALL_SET_VP_REGISTERS] = {"SetVpRegisters", 0, 16, 32, 0, 0, true, false, hv_call_set_vp_registers},
    /* ports, connections, messages and events (port.c) */
    [HVCALL_CREATE_PORT] = {"CreatePort", P(HV_PRIV_CREATE_PORT), 56, 0, 0, 0, false, false, hv_call_create_port},
    [HVCALL_CONNECT_PORT] = {"ConnectPort", P(HV_PRIV_CONNECT_PORT), 72, 0, 0, 0, false, false, hv_call_connect_port},
    [HVCALL_DELETE_PORT] = {"DeletePort", P(HV_PRIV_CREATE_PORT), 16, 0, 0, 0, false, true, hv_call_delete_port},
    [HVCALL_DISCONNECT_PORT] = {"DisconnectPort", P(HV_PRIV_CONNECT_PORT), 16, 0, 0, 0, false, true, hv_call_disconnect_port},
    [HVCALL_POST_MESSAGE] = {"PostMessage", P(HV_PRIV_POST_MESSAGES), 256, 0, 0, 0, false, false, hv_call_post_message},
    [HVCALL_SIGNAL_EVENT] = {"SignalEvent", P(HV_PRIV_SIGNAL_EVENTS), 8, 0, 0, 0, false, true, hv_call_signal_event},
    /* host visibility of a child's own pages (visibility.c) */
    [HVCALL_MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY] = {"ModifySparseGpaPageHostVisibility", 0, 16, 8, 0, 0, true, false, hv_call_modify_host_visibility},
    /* a child's dirty log, read by its parent: one state byte per page (dirty.c) */
    [HVCALL_GET_GPA_PAGES_ACCESS_STATES] = {"GetGpaPagesAccessStates", P(HV_PRIV_CREATE_PARTITIONS), 24, 0, 0, 1, true, false, hv_call_get_gpa_pages_access_states},
};

/* The entry point's own lookup, static so that it inlines (hv_call_lookup, exported, is called
 * through the PLT). */
static const struct hv_call_desc *call_desc(uint16_t code)
{
    return code < HV_CALL_TABLE_SIZE && calls[code].handler ? &calls[code] : NULL;
}

const struct hv_call_desc *hv_call_lookup(uint16_t code)
{
    return call_desc(code);
}

static uint32_t round8(uint32_t n) { return (n + 7u) & ~7u; }

/* A memory block of the caller: 8-byte aligned, inside one page, mapped with `rights`; *pfn is
 * the page under it. */
static bool block_ok(struct hv_host *h, struct hv_partition *p, uint64_t gpa, uint32_t len, uint32_t rights,
                     uint64_t *pfn)
{
    if (gpa & 7)
        return false;
    if ((gpa & (HV_PAGE_SIZE - 1)) + len > HV_PAGE_SIZE)
        return false;
    return hv_gpa_translate(h, p, gpa >> HV_PAGE_SHIFT, rights, pfn);
}

/* Copy the input block (checked by block_ok, which found its page pfn; nothing ran since) as the
 * caller's loads would see it: the hypercall page where it overlays the GPA page. */
static void block_read(struct hv_host *h, struct hv_partition *p, uint64_t gpa, uint64_t pfn, uint8_t *buf,
                       uint32_t len)
{
    uint32_t off = (uint32_t)(gpa & (HV_PAGE_SIZE - 1));
    if (hv_overlay_covers(p, gpa >> HV_PAGE_SHIFT))
        hv_overlay_read(off, buf, len);
    else
        memcpy(buf, hv_spa_page(h, pfn) + off, len);
}

static uint16_t decode_and_run(struct hv_call *c, const struct hv_call_desc *d, uint64_t control,
                               uint64_t in_arg, uint64_t out_arg, const uint64_t *xmm,
                               uint8_t *in_buf, uint8_t *out_buf)
{
    struct hv_host *h = c->h;
    if (control & (HV_CTL_RSVD0_MASK | HV_CTL_RSVD1_MASK | HV_CTL_RSVD2_MASK | HV_CTL_NESTED))
        return HV_STATUS_INVALID_HYPERCALL_INPUT;
    if (!d)
        return HV_STATUS_INVALID_HYPERCALL_CODE;
    c->fast = (control & HV_CTL_FAST) != 0;
    c->rep_count = (uint32_t)((control & HV_CTL_REP_COUNT_MASK) >> HV_CTL_REP_COUNT_SHIFT);
    c->rep_start = (uint32_t)((control & HV_CTL_REP_START_MASK) >> HV_CTL_REP_START_SHIFT);
    if (d->rep ? (c->rep_count == 0 || c->rep_start >= c->rep_count) : (c->rep_count || c->rep_start))
        return HV_STATUS_INVALID_HYPERCALL_INPUT;
    if (control & HV_CTL_VARHEAD_MASK) /* no call hvsim implements takes a variable header */
        return HV_STATUS_INVALID_HYPERCALL_INPUT;
    if (d->privilege && !(c->caller->privileges & d->privilege))
        return HV_STATUS_ACCESS_DENIED;

    c->in_len = round8(d->header_size + c->rep_count * d->in_elem_size);
    c->out_len = round8(d->out_size + c->rep_count * d->out_elem_size);
    if (c->fast) {
        /* Register input: RDX, R8, then XMM0-XMM5 (112 bytes); output always goes to memory,
         * so a call with output cannot be fast. */
        if (!d->fast_ok || c->out_len || c->in_len > 112 || (c->in_len > 16 && !xmm))
            return HV_STATUS_INVALID_HYPERCALL_INPUT;
        memset(in_buf, 0, 112);
        hv_store64(in_buf, in_arg);
        hv_store64(in_buf + 8, out_arg);
        if (xmm)
            memcpy(in_buf + 16, xmm, 96);
    } else {
        uint64_t in_pfn = 0, out_pfn = 0;
        if (c->in_len && !block_ok(h, c->caller, in_arg, c->in_len, HV_MAP_GPA_READABLE, &in_pfn))
            return HV_STATUS_INVALID_ALIGNMENT;
        if (c->out_len && !block_ok(h, c->caller, out_arg, c->out_len, HV_MAP_GPA_WRITABLE, &out_pfn))
            return HV_STATUS_INVALID_ALIGNMENT;
        if (c->in_len && c->out_len && in_arg < out_arg + c->out_len && out_arg < in_arg + c->in_len)
            return HV_STATUS_INVALID_PARAMETER;
        /* One snapshot of the input: the handler never reads guest memory twice. */
        if (c->in_len)
            block_read(h, c->caller, in_arg, in_pfn, in_buf, c->in_len);
    }
    /* The private output block starts zeroed: nothing from an earlier call can leak through it.
     * Most calls' blocks are a few words: a fixed-size clear is a handful of stores, where a
     * clear of a variable length compiles to a string instruction that costs a third of a call. */
    if (c->out_len <= 64)
        memset(out_buf, 0, 64);
    else
        memset(out_buf, 0, c->out_len);
    c->in = in_buf;
    c->out = out_buf;
    uint32_t budget = h->cfg.reps_per_call ? h->cfg.reps_per_call : HV_MAX_REP_COUNT;
    c->rep_end = d->rep ? (c->rep_count - c->rep_start > budget ? c->rep_start + budget : c->rep_count) : 0;
    uint16_t st = d->handler(c);
    uint64_t out_pfn;
    /* The handler may have changed the caller's own mappings, so the output page is translated
     * again (once: the whole block lies in that page); a page no longer writable gets nothing. */
    if (st == HV_STATUS_SUCCESS && !c->fast && c->out_len &&
        hv_gpa_translate(h, c->caller, out_arg >> HV_PAGE_SHIFT, HV_MAP_GPA_WRITABLE, &out_pfn)) {
        /* Write back only what this invocation produced: the fixed output and the elements
         * [rep_start, rep_end); the caller's other output elements stay as they were. */
        uint8_t *page = hv_spa_page(h, out_pfn) + (out_arg & (HV_PAGE_SIZE - 1));
        bool wrote = false;
        if (d->out_size) {
            memcpy(page, out_buf, d->out_size);
            wrote = true;
        }
        if (d->out_elem_size && c->rep_end > c->rep_start) {
            uint32_t off = d->out_size + c->rep_start * d->out_elem_size;
            memcpy(page + off, out_buf + off, (c->rep_end - c->rep_start) * d->out_elem_size);
            wrote = true;
        }
        if (wrote)
            hv_page_mark_dirty(h, out_pfn);
    }
    return st;
}

uint64_t hv_hypercall(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint64_t control,
                      uint64_t in_arg, uint64_t out_arg, const uint64_t *xmm)
{
    struct hv_partition *caller = hv_partition_by_id(h, partition_id);
    if (!caller || vp_index >= HV_MAX_VPS || !caller->vps[vp_index])
        return HV_STATUS_INVALID_VP_INDEX;
    if (caller->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_VP_STATE; /* a VP of a finalized partition never runs */
    uint8_t in_buf[HV_PAGE_SIZE], out_buf[HV_PAGE_SIZE];
    struct hv_call c = { .h = h, .caller = caller, .vp = caller->vps[vp_index],
                         .code = (uint16_t)(control & HV_CTL_CALL_CODE_MASK) };
    const struct hv_call_desc *d = call_desc(c.code);
    /* The core touches guest memory for this VP now: an absent page it meets stalls it (pager.c). */
    struct hv_vp *outer = h->touch_vp;
    h->touch_vp = c.vp;
    uint16_t st = decode_and_run(&c, d, control, in_arg, out_arg, xmm, in_buf, out_buf);
    h->touch_vp = outer;
    /* An exit and a hypercall cost the calling VP time, whatever the outcome. */
    hv_vp_charge(h, c.vp, h->costs.hypercall_ns);
    /* The caller may have been deleted by its own call only if it were its own parent: never. */
    caller->counters.hypercalls++;
    uint64_t reps = 0;
    if (st == HV_STATUS_SUCCESS && d && d->rep)
        reps = c.rep_end;
    else if (d && d->rep && c.rep_count && c.rep_start < c.rep_count)
        reps = c.rep_start; /* a failed invocation completed nothing beyond its start index */
    if (st != HV_STATUS_SUCCESS)
        caller->counters.hypercalls_failed++;
    else if (d && d->rep)
        caller->counters.reps += c.rep_end - c.rep_start;
    return (uint64_t)st | (reps << HV_RESULT_REPS_SHIFT);
}

int hv_call_shape(uint16_t code, uint32_t *header_size, uint32_t *in_elem_size, uint32_t *out_size,
                  uint32_t *out_elem_size, int *rep, int *fast_ok, uint64_t *privilege)
{
    const struct hv_call_desc *d = hv_call_lookup(code);
    if (!d)
        return -1;
    *header_size = d->header_size;
    *in_elem_size = d->in_elem_size;
    *out_size = d->out_size;
    *out_elem_size = d->out_elem_size;
    *rep = d->rep;
    *fast_ok = d->fast_ok;
    *privilege = d->privilege;
    return 0;
}
