/* dirty.c: a child partition's dirty log, which its parent reads and clears in batches during
 * live migration's pre-copy rounds (HvCallGetGpaPagesAccessStates, 0x00C9).
 *
 * The parent turns the log on and off with SetPartitionProperty
 * (HV_PARTITION_PROPERTY_GPA_PAGE_ACCESS_TRACKING, bit 0 Enabled). While it is on the child has a
 * bitmap with one bit per SPA page of the host (a MAP_NORESERVE mapping: only the words of pages
 * that were written cost memory), and every write the core makes goes through
 * hv_page_mark_dirty, which sets the bit of the page's owner when any log exists. That covers every
 * store that passes through the core: a guest's stores (hv_partition_write), hypercall output
 * blocks, the SynIC message and event-flag pages, the parent's copies into granted or host-visible
 * pages. Indexing by SPA page, not GPA page, is what makes the parent's writes cheap to track: the
 * parent reaches a child's page by its SPA address and would need a reverse map to find its GPA.
 * The GPA map goes the other way at read time, so a page mapped at two GPA pages reads dirty at
 * both, which is right: both show the new bytes.
 *
 * Invariants:
 *  - h->dirty_logs counts the partitions whose dirty_log is non-NULL; while it is 0 a write costs
 *    one test of it and nothing else;
 *  - a GPA page newly mapped while the log is on reads dirty once (its contents are new there); an
 *    unmapped GPA page reads clean (there is nothing there to copy);
 *  - pinned writable views (VMBus GPADL grants, own ring views, read-write host-visible views) let
 *    code store into the pages with no core call per store, so the core cannot see those stores:
 *    their pages read dirty at every read while the view lives, and once more after it is
 *    released (the stores made between the last read and the release). Read-only views write
 *    nothing. Hypervisors treat pages pinned for DMA the same way;
 *  - the read decodes fully (caller privilege, target, flags, the whole range) before it changes
 *    anything, so a failed call leaves every log as it was.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"

static size_t log_bytes(const struct hv_host *h)
{
    return ((h->nr_pages + 63) / 64) * sizeof(uint64_t);
}

static inline void set_bit(uint64_t *log, uint64_t pfn)
{
    log[pfn / 64] |= 1ull << (pfn % 64);
}

void hv_dirty_log_mark(struct hv_host *h, uint64_t pfn)
{
    uint32_t owner = h->owner[pfn];
    struct hv_partition *p = owner < HV_MAX_PARTITIONS ? h->parts[owner] : NULL;
    if (p && p->dirty_log)
        set_bit(p->dirty_log, pfn);
}

void hv_dirty_log_mapped(struct hv_partition *p, uint64_t pfn)
{
    if (p->dirty_log)
        set_bit(p->dirty_log, pfn);
}

static bool writable_view(const struct hv_grant *g)
{
    return g->visible != HV_HOST_VISIBILITY_READ_ONLY;
}

void hv_dirty_log_view_released(struct hv_host *h, struct hv_partition *p, const struct hv_grant *g)
{
    (void)h;
    if (!p->dirty_log || !writable_view(g))
        return;
    for (uint32_t i = 0; i < g->npages; i++)
        set_bit(p->dirty_log, g->pfns[i]);
}

uint64_t hv_dirty_tracking(const struct hv_partition *p)
{
    return p->dirty_log ? HV_PAGE_ACCESS_TRACKING_ENABLED : 0;
}

void hv_dirty_log_free(struct hv_host *h, struct hv_partition *p)
{
    free(p->dirty_views.page);
    p->dirty_views = (struct hv_view_index){0};
    if (!p->dirty_log)
        return;
    munmap(p->dirty_log, log_bytes(h));
    p->dirty_log = NULL;
    h->dirty_logs--;
}

uint16_t hv_dirty_set_tracking(struct hv_host *h, struct hv_partition *p, uint64_t value)
{
    /* Only Enabled with 4 KiB granularity (bits 2:1 zero) is something hvsim can do. */
    if (value & ~HV_PAGE_ACCESS_TRACKING_ENABLED)
        return HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE;
    if (!value) {
        hv_dirty_log_free(h, p);
        return HV_STATUS_SUCCESS;
    }
    if (p->dirty_log)
        return HV_STATUS_SUCCESS; /* already on: the log keeps what it holds */
    void *log = mmap(NULL, log_bytes(h), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (log == MAP_FAILED)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* It starts clean: the first pre-copy round sends every page anyway. */
    p->dirty_log = log;
    h->dirty_logs++;
    return HV_STATUS_SUCCESS;
}

static int cmp_view_page(const void *a, const void *b)
{
    uint64_t x = ((const struct hv_view_page *)a)->gpa, y = ((const struct hv_view_page *)b)->gpa;
    return (x > y) - (x < y);
}

/* p's writable view pages sorted by GPA page, made again only when a grant or view was made or
 * released since (h->grants_gen): one invocation of the read then finds its range's view pages by
 * a binary search, instead of walking every grant of the host (a pre-copy round of a 4 GiB VM is
 * 4,096 invocations). False if there is no memory for it (the caller walks the grants). */
static bool view_index(struct hv_host *h, struct hv_partition *p)
{
    struct hv_view_index *x = &p->dirty_views;
    if (x->built && x->gen == h->grants_gen)
        return true;
    uint64_t n = 0;
    for (uint32_t k = 0; k < h->nr_grants; k++)
        if (h->grants[k]->child_slot == p->slot && writable_view(h->grants[k]))
            n += h->grants[k]->npages;
    struct hv_view_page *page = n ? malloc(n * sizeof(*page)) : NULL;
    if (n && !page)
        return false;
    uint64_t i = 0;
    for (uint32_t k = 0; k < h->nr_grants; k++) {
        const struct hv_grant *g = h->grants[k];
        if (g->child_slot == p->slot && writable_view(g))
            for (uint32_t j = 0; j < g->npages; j++)
                page[i++] = (struct hv_view_page){g->gpas[j], g->pfns[j]};
    }
    if (n)
        qsort(page, n, sizeof(*page), cmp_view_page); /* (qsort's array may not be NULL, even empty) */
    free(x->page);
    *x = (struct hv_view_index){.page = page, .n = n, .gen = h->grants_gen, .built = true};
    return true;
}

/* Every page of p's writable views whose GPA page lies in [first, end) counts as written now. */
static void mark_views(struct hv_host *h, struct hv_partition *p, uint64_t first, uint64_t end)
{
    if (view_index(h, p)) {
        const struct hv_view_index *x = &p->dirty_views;
        uint64_t lo = 0, hi = x->n; /* the first entry whose GPA page is >= first */
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (x->page[mid].gpa < first)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (; lo < x->n && x->page[lo].gpa < end; lo++)
            set_bit(p->dirty_log, x->page[lo].pfn);
        return;
    }
    for (uint32_t k = 0; k < h->nr_grants; k++) {
        const struct hv_grant *g = h->grants[k];
        if (g->child_slot != p->slot || !writable_view(g))
            continue;
        for (uint32_t i = 0; i < g->npages; i++)
            if (g->gpas[i] >= first && g->gpas[i] < end)
                set_bit(p->dirty_log, g->pfns[i]);
    }
}

uint16_t hv_call_get_gpa_pages_access_states(struct hv_call *c)
{
    struct hv_in_get_gpa_pages_access_states in;
    memcpy(&in, c->in, sizeof(in));
    /* decode */
    struct hv_partition *p = hv_call_target(c, in.partition_id, false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    /* Reserved flag bits, both clear and set of the dirty bit, and the accessed flags (hvsim keeps
     * no accessed state, and a call that would change it cannot do what it asks) are refused. */
    if (in.flags & ~(HV_GPA_ACCESS_CLEAR_DIRTY | HV_GPA_ACCESS_SET_DIRTY))
        return HV_STATUS_INVALID_PARAMETER;
    if ((in.flags & HV_GPA_ACCESS_CLEAR_DIRTY) && (in.flags & HV_GPA_ACCESS_SET_DIRTY))
        return HV_STATUS_INVALID_PARAMETER;
    /* The whole range the caller names, not only this invocation's part, lies in the GPA space. */
    if (in.gpa_page_number >= HV_MAX_GPA_PAGES || c->rep_count > HV_MAX_GPA_PAGES - in.gpa_page_number)
        return HV_STATUS_INVALID_PARAMETER;
    if (!p->dirty_log)
        return HV_STATUS_INVALID_PARTITION_STATE; /* tracking is off: there is no log to read */
    /* apply */
    uint64_t first = in.gpa_page_number + c->rep_start, end = in.gpa_page_number + c->rep_end;
    mark_views(c->h, p, first, end);
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t e = hv_gpa_entry(c->h, p, in.gpa_page_number + i);
        if (!(e & HV_PTE_PRESENT))
            continue; /* the output byte stays 0: nothing there */
        uint64_t pfn = e >> HV_PAGE_SHIFT, word = pfn / 64, bit = 1ull << (pfn % 64);
        if (p->dirty_log[word] & bit)
            c->out[i] = HV_GPA_ACCESS_STATE_DIRTY;
        if (in.flags & HV_GPA_ACCESS_CLEAR_DIRTY)
            p->dirty_log[word] &= ~bit;
        else if (in.flags & HV_GPA_ACCESS_SET_DIRTY)
            p->dirty_log[word] |= bit;
    }
    return HV_STATUS_SUCCESS;
}

/* ---- the parent's batched reader ------------------------------------------------------------- */

uint16_t hv_dirty_log_read(struct hv_host *h, uint64_t caller_id, uint32_t vp_index, uint64_t in_gpa,
                           uint64_t out_gpa, uint64_t child_id, uint64_t first, uint64_t count, uint64_t flags,
                           uint64_t *out, uint64_t *found)
{
    /* What the typed wrapper does (hypervisor/dirty.py), invocation for invocation: store the
     * header into the caller's input page, issue the rep call, continue from the reps it reports
     * completed, load the output bytes from the caller's output page. Every invocation goes
     * through hv_hypercall (its checks, its costs); only the crossings from Python are saved. */
    uint64_t n_found = 0;
    *found = 0;
    /* The whole range lies in the GPA space, or no invocation is issued (each would check only its own block). */
    if (first >= HV_MAX_GPA_PAGES || count > HV_MAX_GPA_PAGES - first)
        return HV_STATUS_INVALID_PARAMETER;
    for (uint64_t base = first; base < first + count; base += HV_MAX_REP_COUNT) {
        uint32_t n = (uint32_t)(first + count - base < HV_MAX_REP_COUNT ? first + count - base : HV_MAX_REP_COUNT);
        struct hv_in_get_gpa_pages_access_states in = { child_id, flags, base };
        /* (A store that faults leaves the page as it was; the call then reports what it finds.) */
        hv_partition_write(h, caller_id, in_gpa, (const uint8_t *)&in, sizeof(in));
        for (uint32_t start = 0; start < n;) {
            uint64_t control = HVCALL_GET_GPA_PAGES_ACCESS_STATES | ((uint64_t)n << HV_CTL_REP_COUNT_SHIFT) |
                               ((uint64_t)start << HV_CTL_REP_START_SHIFT);
            uint64_t r = hv_hypercall(h, caller_id, vp_index, control, in_gpa, out_gpa, NULL);
            uint16_t st = (uint16_t)(r & 0xFFFF);
            uint32_t done = (uint32_t)((r >> HV_RESULT_REPS_SHIFT) & 0xFFF);
            if (st != HV_STATUS_SUCCESS)
                return st;
            if (done <= start || done > n)
                return HV_STATUS_OPERATION_FAILED; /* no progress: never from this core */
            uint8_t states[HV_MAX_REP_COUNT];
            if (hv_partition_read(h, caller_id, out_gpa + start, states, done - start) != 0)
                return HV_STATUS_INVALID_ALIGNMENT;
            for (uint32_t i = 0; i < done - start; i++)
                if (states[i] & HV_GPA_ACCESS_STATE_DIRTY)
                    out[n_found++] = base + start + i;
            *found = n_found;
            start = done;
        }
    }
    return HV_STATUS_SUCCESS;
}
