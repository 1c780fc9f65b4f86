/* pager.c: absent pages, for post-copy live migration (Hines & Gopalan): the target runs a VM
 * before its memory has arrived, and the first access to a page that is not there yet asks the
 * parent's pager for it.
 *
 * The parent marks mapped GPA pages of its child absent (hv_child_set_absent). The mark lives in
 * a host-wide bitmap by SPA page (h->absent, a MAP_NORESERVE mapping like the dirty bitmap), so
 * the check sits where a GPA becomes an SPA page: hv_gpa_translate calls hv_pager_fault for an
 * absent page, which every access of the child and every access of the core on its behalf goes
 * through (the guest's loads and stores, hypercall input and output blocks, the SynIC message and
 * event-flag pages). The paths that reach a child's page without a translation page it in first:
 * a grant or view at its creation (devices then store into it with no call into the core),
 * ModifyHostVisibility before a page becomes host-visible, the parent's bulk reads (migration.c).
 *
 * A fault calls the host's pager callback (Python, through hv_pager_install), which fills a
 * private copy of the page and says how long the fetch took; the core then copies it in, clears
 * the mark and charges the time to the VP the access was for as a stall: its next step starts that
 * much later, and the VP is off its LP meanwhile (run.c, vp_step). A fetch that fails leaves the
 * page absent and fails the access as an unmapped GPA would, for that child only.
 *
 * Invariants:
 *  - h->absent_pages counts the bits set in h->absent, and each partition's pager.absent its own;
 *    while h->absent_pages is 0 a translation costs one test of it and nothing else;
 *  - an absent page is mapped by a child, and neither pinned (grant, view) nor host-visible:
 *    set_absent refuses those pages, and grants, views and visibility page in first; so the parent
 *    never reaches an absent page without the core seeing it;
 *  - a page that changes owner is no longer absent (hv_page_set_owner calls hv_pager_forget);
 *  - the callback never runs inside another: a fault while one is served fails.
 */
#include <string.h>

#include "core.h"

static void clear_mark(struct hv_host *h, struct hv_partition *p, uint64_t pfn)
{
    h->absent[pfn / 64] &= ~(1ull << (pfn % 64));
    h->absent_pages--;
    if (p)
        p->pager.absent--;
}

void hv_pager_install(struct hv_host *h, hv_pager_fn fn)
{
    h->pager_fn = fn;
}

bool hv_pager_fault(struct hv_host *h, const struct hv_partition *cp, uint64_t gpa_page, uint64_t pfn)
{
    struct hv_partition *p = h->parts[cp->slot];
    p->pager.faults++;
    if (!h->pager_fn || h->in_pager) {
        p->pager.failures++;
        return false;
    }
    /* The VP the access is for: the one the core is working for now, if it is this child's. */
    struct hv_vp *t = h->touch_vp;
    uint32_t vp_index = t && t->part_slot == p->slot ? t->index : UINT32_MAX, vp_out = vp_index;
    uint64_t stall = 0;
    uint8_t page[HV_PAGE_SIZE];
    h->in_pager = true;
    int rc = h->pager_fn(h, p->id, gpa_page, vp_index, page, &stall, &vp_out);
    h->in_pager = false;
    if (rc != 0) {
        p->pager.failures++;
        return false;
    }
    memcpy(hv_spa_page(h, pfn), page, HV_PAGE_SIZE);
    clear_mark(h, p, pfn);
    hv_page_mark_dirty(h, pfn);
    struct hv_vp *vp = vp_out < HV_MAX_VPS ? p->vps[vp_out] : NULL;
    if (vp) {
        vp->stall_ns += stall;
        p->pager.stall_ns += stall;
    } else {
        p->pager.unattributed++;
    }
    return true;
}

void hv_pager_supplied(struct hv_host *h, struct hv_partition *p, uint64_t pfn)
{
    if (hv_page_absent(h, pfn))
        clear_mark(h, p, pfn);
}

void hv_pager_forget(struct hv_host *h, uint64_t pfn)
{
    uint32_t owner = h->owner[pfn];
    clear_mark(h, owner < HV_MAX_PARTITIONS ? h->parts[owner] : NULL, pfn);
}

bool hv_pager_present(struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page, uint64_t pfn)
{
    return !hv_page_absent(h, pfn) || hv_pager_fault(h, p, gpa_page, pfn);
}

uint16_t hv_child_set_absent(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                             uint64_t count, uint64_t *bad_page)
{
    struct hv_partition *p = hv_child_of(h, parent_id, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (first >= HV_MAX_GPA_PAGES || count > HV_MAX_GPA_PAGES - first) {
        *bad_page = first >= HV_MAX_GPA_PAGES ? first : HV_MAX_GPA_PAGES;
        return HV_STATUS_INVALID_PARAMETER;
    }
    /* decode: every page mapped, none reached by the parent without the core */
    for (uint64_t gpa = first; gpa < first + count; gpa++) {
        uint64_t e = hv_gpa_entry(h, p, gpa);
        *bad_page = gpa;
        if (!(e & HV_PTE_PRESENT))
            return HV_STATUS_INVALID_PARAMETER;
        uint64_t pfn = e >> HV_PAGE_SHIFT;
        if (h->pin_refs[pfn] || h->host_vis[pfn])
            return HV_STATUS_OBJECT_IN_USE;
    }
    /* apply */
    for (uint64_t gpa = first; gpa < first + count; gpa++) {
        uint64_t pfn = hv_gpa_entry(h, p, gpa) >> HV_PAGE_SHIFT;
        if (hv_page_absent(h, pfn))
            continue;
        h->absent[pfn / 64] |= 1ull << (pfn % 64);
        h->absent_pages++;
        p->pager.absent++;
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_child_absent_map(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                             uint64_t count, uint8_t *out)
{
    struct hv_partition *p = hv_child_of(h, parent_id, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (first >= HV_MAX_GPA_PAGES || count > HV_MAX_GPA_PAGES - first)
        return HV_STATUS_INVALID_PARAMETER;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t e = hv_gpa_entry(h, p, first + i);
        out[i] = (e & HV_PTE_PRESENT) && hv_page_absent(h, e >> HV_PAGE_SHIFT);
    }
    return HV_STATUS_SUCCESS;
}

int hv_pager_stats(struct hv_host *h, uint64_t partition_id, struct hv_pager_stats *out)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    if (!p)
        return -1;
    *out = p->pager;
    return 0;
}

void hv_pager_digest(const struct hv_host *h, struct hv_digest *d)
{
    if (!h->absent_pages)
        return; /* (the common case: a digest taken without absent pages is the one it always was) */
    for (uint64_t w = 0; w < (h->nr_pages + 63) / 64; w++)
        for (uint64_t bits = h->absent[w]; bits; bits &= bits - 1) {
            hv_digest_u64(d, 0xAB5E27ull);
            hv_digest_u64(d, w * 64 + (uint64_t)__builtin_ctzll(bits));
        }
}
