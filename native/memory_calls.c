/* memory_calls.c: the memory hypercalls: DepositMemory, WithdrawMemory, GetMemoryBalance,
 * MapGpaPages and UnmapGpaPages.
 *
 * Rep calls here validate every element of the batch this invocation will complete before they
 * apply any of it, so a failed invocation changes nothing and a successful one has exactly the
 * effect of its elements applied one by one (resuming from a start index is the same as one
 * uninterrupted call).
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

static uint64_t elem64(const struct hv_call *c, uint32_t header, uint32_t i)
{
    return hv_load64(c->in + header + (size_t)i * 8);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* True if a page appears twice among the elements [rep_start, rep_end) this invocation completes
 * (duplicates are refused). A strictly ascending list, what builders send, has none and is
 * recognised in one pass; any other list is sorted in a scratch copy and neighbours compared,
 * O(n log n). The elements lie in the one-page input block, so the scratch fits on the stack. */
static bool has_duplicate(const struct hv_call *c, uint32_t header)
{
    uint32_t n = c->rep_end - c->rep_start;
    bool ascending = true;
    for (uint32_t i = c->rep_start + 1; i < c->rep_end && ascending; i++)
        ascending = elem64(c, header, i - 1) < elem64(c, header, i);
    if (ascending)
        return false;
    uint64_t v[HV_PAGE_SIZE / 8];
    for (uint32_t i = 0; i < n; i++)
        v[i] = elem64(c, header, c->rep_start + i);
    qsort(v, n, sizeof(v[0]), cmp_u64);
    for (uint32_t i = 1; i < n; i++)
        if (v[i - 1] == v[i])
            return true;
    return false;
}

static bool owned_by(const struct hv_host *h, uint64_t pfn, uint32_t slot)
{
    return pfn < h->nr_pages && h->owner[pfn] == slot;
}

uint16_t hv_call_deposit_memory(struct hv_call *c)
{
    struct hv_partition *p = hv_call_target(c, hv_load64(c->in), true);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = elem64(c, 8, i);
        /* The caller deposits pages it owns (the root sees them at GPA == SPA). */
        if (!owned_by(c->h, pfn, c->caller->slot))
            return HV_STATUS_INVALID_PARAMETER;
    }
    if (has_duplicate(c, 8)) /* the same status as a page not owned: the order does not show */
        return HV_STATUS_INVALID_PARAMETER;
    if (!hv_page_list_reserve(&p->pool_free, c->rep_end - c->rep_start))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply */
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = elem64(c, 8, i);
        hv_page_set_owner(c->h, pfn, HV_OWNER_HV);
        hv_page_list_push(&p->pool_free, pfn);
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_withdraw_memory(struct hv_call *c)
{
    struct hv_in_withdraw_memory in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = hv_call_target(c, in.partition_id, true);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (in.proximity_domain_info != 0)
        return HV_STATUS_INVALID_PROXIMITY_DOMAIN_INFO;
    if (p->pool_free.len < c->rep_end - c->rep_start)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply: the most recently deposited free pages come back first */
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = p->pool_free.pfn[--p->pool_free.len];
        hv_page_set_owner(c->h, pfn, c->caller->slot);
        hv_store64(c->out + (size_t)i * 8, pfn);
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_get_memory_balance(struct hv_call *c)
{
    struct hv_in_get_memory_balance in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = hv_call_target(c, in.partition_id, true);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (in.proximity_domain_info != 0)
        return HV_STATUS_INVALID_PROXIMITY_DOMAIN_INFO;
    struct hv_out_get_memory_balance out = { p->pool_free.len, p->pool_used.len };
    memcpy(c->out, &out, sizeof(out));
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_map_gpa_pages(struct hv_call *c)
{
    struct hv_in_map_gpa_pages in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = hv_call_target(c, in.target_partition_id, false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (p->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    if ((in.map_flags & ~HV_MAP_GPA_VALID_MASK) || in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (in.target_gpa_base >= HV_MAX_GPA_PAGES || in.target_gpa_base + c->rep_count > HV_MAX_GPA_PAGES)
        return HV_STATUS_INVALID_PARAMETER;
    uint64_t first = in.target_gpa_base + c->rep_start, count = c->rep_end - c->rep_start;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = elem64(c, sizeof(in), i);
        if (!owned_by(c->h, pfn, c->caller->slot))
            return HV_STATUS_INVALID_PARAMETER;
        /* hvsim does not remap: a GPA page already backed must be unmapped first. */
        if (hv_gpa_entry(c->h, p, in.target_gpa_base + i) & HV_PTE_PRESENT)
            return HV_STATUS_INVALID_PARAMETER;
    }
    if (has_duplicate(c, sizeof(in))) /* the same status as the checks above: the order does not show */
        return HV_STATUS_INVALID_PARAMETER;
    uint32_t leaves = hv_gpa_new_leaves(c->h, p, first, count);
    if (p->pool_free.len < leaves)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    if (!hv_page_list_reserve(&p->pool_used, leaves))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply: the page moves from the parent to the child, zeroed on the way */
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = elem64(c, sizeof(in), i);
        hv_page_set_owner(c->h, pfn, p->slot);
        hv_gpa_map(c->h, p, in.target_gpa_base + i, pfn, in.map_flags);
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_unmap_gpa_pages(struct hv_call *c)
{
    struct hv_in_unmap_gpa_pages in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = hv_call_target(c, in.target_partition_id, false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (in.unmap_flags != 0 || in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (in.target_gpa_base >= HV_MAX_GPA_PAGES || in.target_gpa_base + c->rep_count > HV_MAX_GPA_PAGES)
        return HV_STATUS_INVALID_PARAMETER;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t e = hv_gpa_entry(c->h, p, in.target_gpa_base + i);
        if (!(e & HV_PTE_PRESENT))
            return HV_STATUS_INVALID_PARAMETER;
        if (c->h->pin_refs[e >> HV_PAGE_SHIFT])
            return HV_STATUS_OBJECT_IN_USE; /* granted (a live GPADL) or in a view: pinned */
    }
    /* apply: the page returns to the parent, zeroed */
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = hv_gpa_unmap(c->h, p, in.target_gpa_base + i);
        hv_page_set_owner(c->h, pfn, c->caller->slot);
    }
    return HV_STATUS_SUCCESS;
}
