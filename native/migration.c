/* migration.c: the parent's bulk access to a child's memory, which live migration uses to send a
 * VM's pages from the source host and to place them on the target: batches of pages in one
 * crossing from Python, never a call per page.
 *
 * The parent reaches the child's pages by the child's GPA map, whatever rights the child has on
 * them (a read-only or execute-only page moves too) and under the hypercall page's overlay (the
 * overlay is the hypervisor's, made again on the target; the page under it is the child's).
 *
 * Invariants:
 *  - only the child's parent may call (INVALID_PARTITION_ID for anyone else, as for a hypercall
 *    naming a partition that is not its child);
 *  - a call checks every page it names before it copies a byte: a page the child does not map
 *    refuses the whole call (INVALID_PARAMETER, *bad_page), and nothing changed;
 *  - a write is a write of the core: it marks the page non-zero and sets the child's dirty log
 *    (hv_page_mark_dirty), and the page it fills whole is no longer absent (pager.c);
 *  - a read of an absent page asks the pager first, as any access does; a failed fetch fails the
 *    call as an unmapped page would (pages already fetched stay fetched: their contents are right);
 *  - a page the core never wrote (its bit in h->dirty clear) is all zeros and is not read at all,
 *    so a large VM whose memory is mostly untouched costs no memory to scan or to send.
 */
#include <string.h>

#include "core.h"

/* The child named by child_id if parent_id is its parent, else NULL. */
struct hv_partition *hv_child_of(struct hv_host *h, uint64_t parent_id, uint64_t child_id)
{
    struct hv_partition *p = hv_partition_by_id(h, child_id);
    if (!p || p->slot == 0 || !h->parts[p->parent_slot] || h->parts[p->parent_slot]->id != parent_id)
        return NULL;
    return p;
}

static bool page_written(const struct hv_host *h, uint64_t pfn)
{
    return (h->dirty[pfn / 64] >> (pfn % 64)) & 1;
}

/* The GPA page of item i: gpa_pages[i], or first + i for a range (gpa_pages NULL). */
static inline uint64_t nth(const uint64_t *gpa_pages, uint64_t first, uint64_t i)
{
    return gpa_pages ? gpa_pages[i] : first + i;
}

/* decode: every page is mapped in p (and a range does not wrap). */
static uint16_t check_pages(struct hv_host *h, const struct hv_partition *p, const uint64_t *gpa_pages,
                            uint64_t first, uint64_t count, uint64_t *bad_page)
{
    if (!gpa_pages && (first >= HV_MAX_GPA_PAGES || count > HV_MAX_GPA_PAGES - first)) {
        *bad_page = first >= HV_MAX_GPA_PAGES ? first : HV_MAX_GPA_PAGES;
        return HV_STATUS_INVALID_PARAMETER;
    }
    for (uint64_t i = 0; i < count; i++) {
        uint64_t gpa = nth(gpa_pages, first, i);
        if (!(hv_gpa_entry(h, p, gpa) & HV_PTE_PRESENT)) {
            *bad_page = gpa;
            return HV_STATUS_INVALID_PARAMETER;
        }
    }
    return HV_STATUS_SUCCESS;
}

static uint16_t read_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, const uint64_t *gpa_pages,
                           uint64_t first, uint64_t count, uint8_t *out, uint64_t *bad_page)
{
    struct hv_partition *p = hv_child_of(h, parent_id, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    uint16_t st = check_pages(h, p, gpa_pages, first, count, bad_page);
    if (st != HV_STATUS_SUCCESS)
        return st;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t gpa = nth(gpa_pages, first, i), pfn = hv_gpa_entry(h, p, gpa) >> HV_PAGE_SHIFT;
        uint8_t *dst = out + i * HV_PAGE_SIZE;
        if (hv_page_absent(h, pfn) && !hv_pager_fault(h, p, gpa, pfn)) {
            *bad_page = gpa;
            return HV_STATUS_INVALID_PARAMETER;
        }
        if (page_written(h, pfn))
            memcpy(dst, hv_spa_page(h, pfn), HV_PAGE_SIZE);
        else
            memset(dst, 0, HV_PAGE_SIZE);
    }
    return HV_STATUS_SUCCESS;
}

static uint16_t write_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, const uint64_t *gpa_pages,
                            uint64_t first, uint64_t count, const uint8_t *data, uint64_t *bad_page)
{
    struct hv_partition *p = hv_child_of(h, parent_id, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    uint16_t st = check_pages(h, p, gpa_pages, first, count, bad_page);
    if (st != HV_STATUS_SUCCESS)
        return st;
    /* apply: nothing below can fail */
    for (uint64_t i = 0; i < count; i++) {
        uint64_t pfn = hv_gpa_entry(h, p, nth(gpa_pages, first, i)) >> HV_PAGE_SHIFT;
        const uint8_t *src = data + i * HV_PAGE_SIZE;
        hv_pager_supplied(h, p, pfn);
        if (!page_written(h, pfn) && hv_page_is_zero(src)) {
            /* Zeros onto zeros: the page stays untouched (and costs no memory); it was still
             * written, for the dirty log. */
            if (h->dirty_logs)
                hv_dirty_log_mark(h, pfn);
            continue;
        }
        memcpy(hv_spa_page(h, pfn), src, HV_PAGE_SIZE);
        hv_page_mark_dirty(h, pfn);
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_child_read_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, const uint64_t *gpa_pages,
                             uint64_t count, uint8_t *out, uint64_t *bad_page)
{
    return read_pages(h, parent_id, child_id, gpa_pages, 0, count, out, bad_page);
}

uint16_t hv_child_read_range(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                             uint64_t count, uint8_t *out, uint64_t *bad_page)
{
    return read_pages(h, parent_id, child_id, NULL, first, count, out, bad_page);
}

uint16_t hv_child_write_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, const uint64_t *gpa_pages,
                              uint64_t count, const uint8_t *data, uint64_t *bad_page)
{
    return write_pages(h, parent_id, child_id, gpa_pages, 0, count, data, bad_page);
}

uint16_t hv_child_write_range(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                              uint64_t count, const uint8_t *data, uint64_t *bad_page)
{
    return write_pages(h, parent_id, child_id, NULL, first, count, data, bad_page);
}

uint16_t hv_child_page_in(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t gpa_page,
                          const uint8_t *data)
{
    uint64_t bad;
    return write_pages(h, parent_id, child_id, NULL, gpa_page, 1, data, &bad);
}

bool hv_page_is_zero(const uint8_t *page)
{
    /* Eight words at a time, OR-ed, with one test per 64 bytes: a zero page is read once at memory speed. */
    for (uint32_t i = 0; i < HV_PAGE_SIZE; i += 64) {
        uint64_t acc = 0;
        for (uint32_t k = 0; k < 64; k += 8)
            acc |= hv_load64(page + i + k);
        if (acc)
            return false;
    }
    return true;
}

uint16_t hv_child_nonzero_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                                uint64_t count, uint64_t *out, uint64_t *found)
{
    struct hv_partition *p = hv_child_of(h, parent_id, child_id);
    *found = 0;
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (first >= HV_MAX_GPA_PAGES || count > HV_MAX_GPA_PAGES - first)
        return HV_STATUS_INVALID_PARAMETER;
    uint64_t n = 0, end = first + count;
    for (uint64_t gpa = first; gpa < end;) {
        /* A GPA region with no leaf table maps nothing: skip all of it at once. */
        uint64_t region_end = (gpa / HV_LEAF_ENTRIES + 1) * HV_LEAF_ENTRIES;
        if (region_end > end)
            region_end = end;
        if (!p->gpa_leaf || !p->gpa_leaf[gpa / HV_LEAF_ENTRIES]) {
            gpa = region_end;
            continue;
        }
        for (; gpa < region_end; gpa++) {
            uint64_t e = hv_gpa_entry(h, p, gpa);
            if (!(e & HV_PTE_PRESENT))
                continue;
            uint64_t pfn = e >> HV_PAGE_SHIFT;
            if (hv_page_absent(h, pfn) || (page_written(h, pfn) && !hv_page_is_zero(hv_spa_page(h, pfn))))
                out[n++] = gpa;
        }
    }
    *found = n;
    return HV_STATUS_SUCCESS;
}
