/* grant.c: grants, the only cross-partition memory access: a child's pages made reachable by its
 * parent (the core's half of a VMBus GPADL).
 *
 * Invariants: a grant names only pages mapped in its child at creation; while any grant names a
 * page (grant_refs > 0) the page is pinned: it cannot be unmapped, withdrawn or change owner;
 * the parent reaches exactly its own pages, the pages of live grants and the pages its children
 * made host-visible (INV-REACH-PARENT; visibility.c). Host-visible views (`visible` set) are
 * views the parent makes of such pages: pinned and accounted like grants, revoked like one the
 * moment a page of theirs stops being visible enough.
 * A revoked grant's view is replaced by private zero pages at once, so a stale pointer into it
 * can never reach SPA memory again; its address range is unmapped when the last Python export of
 * it goes too (struct hv_mapping), so create/revoke cycles cost the process nothing lasting.
 *
 * What grants cost the process is bounded and accounted per partition: each run of contiguous
 * SPA pages in a view is one memory mapping (and a process has only vm.max_map_count of them),
 * so a partition's grants and views may cost at most grant_mappings_per_child mappings, all of
 * them together grant_mappings_per_host, and a child may have at most grant_pages_per_child pages
 * granted. A refusal records which limit it met (hv_grant_last_refusal).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"

#define HV_GRANT_PAGES_PER_CHILD (1280u * 256u) /* 1,280 MiB (Hyper-V WS2019+ GPADL limit) */
/* Default mapping limits: a VM with a hundred channels needs a few hundred mappings (a ring and
 * its own view each, plus buffers), and 32 such partitions at their limit stay at half of
 * Linux's default vm.max_map_count, leaving the other half to the interpreter and libraries. */
#define HV_GRANT_MAPPINGS_PER_CHILD 1024u
#define HV_GRANT_MAPPINGS_PER_HOST  32768u

/* A view's address range. The live grant holds one reference and every Python export one more,
 * so a memoryview that outlives the grant still points into mapped (zero) memory. It does not
 * point back at the host: exports may outlive the host too. */
struct hv_mapping {
    uint8_t *base;
    size_t len;
    uint32_t refs;
};

static void mapping_put(struct hv_mapping *m)
{
    if (--m->refs == 0) {
        munmap(m->base, m->len);
        free(m);
    }
}

static uint64_t pages_limit(const struct hv_host *h)
{
    return h->cfg.grant_pages_per_child ? h->cfg.grant_pages_per_child : HV_GRANT_PAGES_PER_CHILD;
}

static uint64_t mappings_limit(const struct hv_host *h)
{
    return h->cfg.grant_mappings_per_child ? h->cfg.grant_mappings_per_child : HV_GRANT_MAPPINGS_PER_CHILD;
}

static uint64_t host_mappings_limit(const struct hv_host *h)
{
    return h->cfg.grant_mappings_per_host ? h->cfg.grant_mappings_per_host : HV_GRANT_MAPPINGS_PER_HOST;
}

static uint16_t refuse(struct hv_host *h, const struct hv_partition *p, uint32_t limit, uint64_t have,
                       uint64_t want, uint64_t max, int error)
{
    h->grant_refusal = (struct hv_grant_refusal){ .limit = limit, .error = error, .partition_id = p->id,
                                                  .have = have, .want = want, .max = max };
    return HV_STATUS_NO_RESOURCES;
}

/* Own views (hv_view_*) are grants a partition makes to itself: a contiguous mapping of its own
 * pages for its own ring code, pinned like any grant, reaching nothing new. They live in the same
 * list with `own` set, and only parent grants count in grant_refs (the root's reach). */
static struct hv_partition *child_of_root(struct hv_host *h, uint64_t child_id)
{
    struct hv_partition *p = hv_partition_by_id(h, child_id);
    return p && p->slot != 0 && p->parent_slot == 0 ? p : NULL;
}

static int find_kind(const struct hv_host *h, uint32_t slot, uint32_t id, bool own)
{
    for (uint32_t i = 0; i < h->nr_grants; i++)
        if (h->grants[i]->child_slot == slot && h->grants[i]->id == id && h->grants[i]->own == own &&
            !h->grants[i]->visible)
            return (int)i;
    return -1;
}

int hv_grant_find_visible(const struct hv_host *h, uint32_t slot, uint32_t id)
{
    for (uint32_t i = 0; i < h->nr_grants; i++)
        if (h->grants[i]->child_slot == slot && h->grants[i]->id == id && h->grants[i]->visible)
            return (int)i;
    return -1;
}

static int find(const struct hv_host *h, uint32_t slot, uint32_t id)
{
    return find_kind(h, slot, id, false);
}

uint64_t hv_granted_pages(struct hv_host *h, uint64_t child_id)
{
    struct hv_partition *p = hv_partition_by_id(h, child_id);
    return p ? p->granted_pages : 0;
}

/* Runs of contiguous SPA pages: each is one mapping of the view. */
static uint32_t count_runs(const uint64_t *pfns, uint32_t n)
{
    uint32_t runs = n ? 1 : 0;
    for (uint32_t i = 1; i < n; i++)
        runs += pfns[i] != pfns[i - 1] + 1;
    return runs;
}

/* Map pfns contiguously, one mmap per run of contiguous SPA pages. NULL (and *err = errno) if
 * the process cannot: everything mapped so far is undone. */
static struct hv_mapping *map_view(struct hv_host *h, const uint64_t *pfns, uint32_t n, int prot, int *err)
{
    struct hv_mapping *m = malloc(sizeof(*m));
    size_t len = (size_t)n << HV_PAGE_SHIFT;
    uint8_t *base = m ? mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                      : MAP_FAILED;
    if (base == MAP_FAILED) {
        *err = m ? errno : ENOMEM;
        free(m);
        return NULL;
    }
    for (uint32_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && pfns[j] == pfns[j - 1] + 1; j++)
            ;
        void *at = mmap(base + ((size_t)i << HV_PAGE_SHIFT), (size_t)(j - i) << HV_PAGE_SHIFT,
                        prot, MAP_SHARED | MAP_FIXED, h->spa_fd,
                        (off_t)(pfns[i] << HV_PAGE_SHIFT));
        if (at == MAP_FAILED) {
            *err = errno;
            munmap(base, len);
            free(m);
            return NULL;
        }
    }
    *m = (struct hv_mapping){ base, len, 1 };
    return m;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static uint16_t create(struct hv_host *h, struct hv_partition *p, uint32_t grant_id, const uint64_t *gpa_pages,
                       uint32_t count, bool own, uint8_t visible, uint64_t *bad)
{
    if (count == 0 || (visible ? hv_grant_find_visible(h, p->slot, grant_id) : find_kind(h, p->slot, grant_id, own)) >= 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (!own && p->granted_pages + count > pages_limit(h))
        return refuse(h, p, HV_GRANT_LIMIT_CHILD_PAGES, p->granted_pages, count, pages_limit(h), 0);
    struct hv_grant *g = calloc(1, sizeof(*g));
    uint64_t *pfns = malloc(count * sizeof(uint64_t)), *gpas = malloc(count * sizeof(uint64_t));
    if (!g || !pfns || !gpas)
        goto fail;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t e = hv_gpa_entry(h, p, gpa_pages[i]);
        /* An own view needs the pages readable and writable by the partition itself. */
        uint32_t rw = HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE;
        if (!(e & HV_PTE_PRESENT) || (own && (((e >> HV_PTE_RIGHTS_SHIFT) & rw) != rw)))
            goto fail_param;
        /* Devices store into the view with no call into the core: a page that has not arrived
         * yet (post-copy) is fetched now, or the grant fails as for a page not mapped (pager.c). */
        if (!hv_pager_present(h, p, gpa_pages[i], e >> HV_PAGE_SHIFT))
            goto fail_param;
        /* A host-visible view needs every page shown to the host with at least its access. */
        if (visible && (h->host_vis[e >> HV_PAGE_SHIFT] & visible) != visible) {
            free(g); free(pfns); free(gpas);
            *bad = gpa_pages[i];
            return HV_STATUS_ACCESS_DENIED;
        }
        pfns[i] = e >> HV_PAGE_SHIFT;
        gpas[i] = gpa_pages[i];
    }
    /* A page twice: sort a copy rather than compare every pair (a GPADL may hold 327,680 pages). */
    uint64_t *sorted = malloc(count * sizeof(uint64_t));
    if (!sorted)
        goto fail;
    memcpy(sorted, gpas, count * sizeof(uint64_t));
    qsort(sorted, count, sizeof(uint64_t), cmp_u64);
    bool twice = false;
    for (uint32_t i = 1; i < count && !twice; i++)
        twice = sorted[i] == sorted[i - 1];
    free(sorted);
    if (twice)
        goto fail_param;
    if (h->nr_grants == h->cap_grants) {
        uint32_t cap = h->cap_grants ? h->cap_grants * 2 : 16;
        struct hv_grant **n = realloc(h->grants, cap * sizeof(*n));
        if (!n)
            goto fail;
        h->grants = n;
        h->cap_grants = cap;
    }
    uint32_t runs = count_runs(pfns, count);
    if (p->grant_mappings + runs > mappings_limit(h)) {
        free(g); free(pfns); free(gpas);
        return refuse(h, p, HV_GRANT_LIMIT_CHILD_MAPPINGS, p->grant_mappings, runs, mappings_limit(h), 0);
    }
    if (h->grant_mappings + runs > host_mappings_limit(h)) {
        free(g); free(pfns); free(gpas);
        return refuse(h, p, HV_GRANT_LIMIT_HOST_MAPPINGS, h->grant_mappings, runs, host_mappings_limit(h), 0);
    }
    int err = 0;
    g->map = map_view(h, pfns, count, visible == HV_HOST_VISIBILITY_READ_ONLY ? PROT_READ : PROT_READ | PROT_WRITE,
                      &err);
    if (!g->map) {
        free(g); free(pfns); free(gpas);
        return refuse(h, p, HV_GRANT_LIMIT_PROCESS_MAPPINGS, h->grant_mappings, runs, host_mappings_limit(h), err);
    }
    /* apply */
    g->view = g->map->base;
    g->runs = runs;
    p->grant_mappings += runs;
    h->grant_mappings += runs;
    if (!own)
        p->granted_pages += count;
    g->child_slot = p->slot;
    g->own = own;
    g->visible = visible;
    g->id = grant_id;
    g->npages = count;
    g->pfns = pfns;
    g->gpas = gpas;
    for (uint32_t i = 0; i < count; i++) {
        h->pin_refs[pfns[i]]++;
        if (!own && !visible)
            h->grant_refs[pfns[i]]++;
        /* Writes through the view bypass the core's copy paths: assume the page dirty, so it is
         * zeroed before it ever changes owner. A writable view's pages also count as written in
         * the child's dirty log (dirty.c); a read-only view writes nothing there. */
        if (visible != HV_HOST_VISIBILITY_READ_ONLY)
            hv_page_mark_dirty(h, pfns[i]);
        else
            h->dirty[pfns[i] / 64] |= 1ull << (pfns[i] % 64);
    }
    h->grants[h->nr_grants++] = g;
    h->grants_gen++;
    return HV_STATUS_SUCCESS;
fail_param:
    free(g); free(pfns); free(gpas);
    return HV_STATUS_INVALID_PARAMETER;
fail:
    free(g); free(pfns); free(gpas);
    return HV_STATUS_INSUFFICIENT_MEMORY;
}

uint16_t hv_grant_create(struct hv_host *h, uint64_t child_id, uint32_t grant_id, const uint64_t *gpa_pages,
                         uint32_t count)
{
    struct hv_partition *p = child_of_root(h, child_id);
    uint64_t bad;
    return p ? create(h, p, grant_id, gpa_pages, count, false, 0, &bad) : HV_STATUS_INVALID_PARTITION_ID;
}

uint16_t hv_grant_make(struct hv_host *h, struct hv_partition *p, uint32_t id, const uint64_t *gpa_pages,
                       uint32_t count, uint8_t visible, uint64_t *bad)
{
    return create(h, p, id, gpa_pages, count, false, visible, bad);
}

uint16_t hv_view_create(struct hv_host *h, uint64_t partition_id, uint32_t view_id, const uint64_t *gpa_pages,
                        uint32_t count)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    if (!p || p->slot == 0)
        return HV_STATUS_INVALID_PARTITION_ID; /* the root sees its memory at GPA == SPA already */
    uint64_t bad;
    return create(h, p, view_id, gpa_pages, count, true, 0, &bad);
}

/* End grant g: unpin its pages, give back its accounting and its view (the caller takes it out
 * of h->grants). */
static void release(struct hv_host *h, struct hv_grant *g)
{
    struct hv_partition *p = h->parts[g->child_slot];
    h->grants_gen++;
    if (p)
        hv_dirty_log_view_released(h, p, g); /* stores through the view since the last log read */
    for (uint32_t i = 0; i < g->npages; i++) {
        h->pin_refs[g->pfns[i]]--;
        if (!g->own && !g->visible)
            h->grant_refs[g->pfns[i]]--;
    }
    if (p) {
        p->grant_mappings -= g->runs;
        if (!g->own)
            p->granted_pages -= g->npages;
    }
    h->grant_mappings -= g->runs;
    /* An export still holds the range: keep it, but as private zero pages (see the invariant
     * above); it is unmapped when the last export goes. Otherwise it is unmapped now. */
    if (g->map->refs > 1)
        mmap(g->view, g->map->len, g->visible == HV_HOST_VISIBILITY_READ_ONLY ? PROT_READ : PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    mapping_put(g->map);
    free(g->pfns);
    free(g->gpas);
    free(g);
}

static void drop(struct hv_host *h, uint32_t index)
{
    release(h, h->grants[index]);
    memmove(&h->grants[index], &h->grants[index + 1], (h->nr_grants - index - 1) * sizeof(*h->grants));
    h->nr_grants--;
}

void hv_grant_drop(struct hv_host *h, uint32_t index)
{
    drop(h, index);
}

uint16_t hv_grant_revoke(struct hv_host *h, uint64_t child_id, uint32_t grant_id)
{
    struct hv_partition *p = child_of_root(h, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    int i = find(h, p->slot, grant_id);
    if (i < 0)
        return HV_STATUS_INVALID_PARAMETER;
    drop(h, (uint32_t)i);
    return HV_STATUS_SUCCESS;
}

uint8_t *hv_grant_view(struct hv_host *h, uint64_t child_id, uint32_t grant_id, uint32_t *npages)
{
    struct hv_partition *p = child_of_root(h, child_id);
    int i = p ? find(h, p->slot, grant_id) : -1;
    if (i < 0)
        return NULL;
    *npages = h->grants[i]->npages;
    return h->grants[i]->view;
}

uint32_t hv_grant_pages(struct hv_host *h, uint64_t child_id, uint32_t grant_id, uint64_t *pfns, uint32_t max)
{
    struct hv_partition *p = child_of_root(h, child_id);
    int i = p ? find(h, p->slot, grant_id) : -1;
    if (i < 0)
        return 0;
    struct hv_grant *g = h->grants[i];
    for (uint32_t k = 0; k < g->npages && k < max; k++)
        pfns[k] = g->pfns[k];
    return g->npages;
}

/* One pass: the partition's grants and views end, the others keep their order. */
void hv_grants_drop_partition(struct hv_host *h, uint32_t slot)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < h->nr_grants; i++) {
        h->teardown_visits++;
        if (h->grants[i]->child_slot == slot)
            release(h, h->grants[i]);
        else
            h->grants[n++] = h->grants[i];
    }
    h->nr_grants = n;
}

void hv_grants_fini(struct hv_host *h)
{
    for (uint32_t i = 0; i < h->nr_grants; i++)
        release(h, h->grants[i]);
    h->nr_grants = 0;
    free(h->grants);
}

void hv_grants_digest(const struct hv_host *h, struct hv_digest *d)
{
    hv_digest_u64(d, h->nr_grants);
    for (uint32_t i = 0; i < h->nr_grants; i++) {
        const struct hv_grant *g = h->grants[i];
        hv_digest_u64(d, ((uint64_t)g->child_slot << 32) | g->id);
        hv_digest_u64(d, g->own | (uint64_t)g->visible << 8);
        for (uint32_t k = 0; k < g->npages; k++)
            hv_digest_u64(d, g->pfns[k]);
    }
}

uint32_t hv_grant_ids(struct hv_host *h, uint64_t child_id, uint32_t *ids, uint32_t max)
{
    struct hv_partition *p = hv_partition_by_id(h, child_id);
    uint32_t n = 0;
    for (uint32_t i = 0; p && i < h->nr_grants; i++)
        if (h->grants[i]->child_slot == p->slot && !h->grants[i]->own && !h->grants[i]->visible) {
            if (n < max)
                ids[n] = h->grants[i]->id;
            n++;
        }
    return n;
}

uint16_t hv_view_release(struct hv_host *h, uint64_t partition_id, uint32_t view_id)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    int i = p ? find_kind(h, p->slot, view_id, true) : -1;
    if (i < 0)
        return HV_STATUS_INVALID_PARAMETER;
    drop(h, (uint32_t)i);
    return HV_STATUS_SUCCESS;
}

uint8_t *hv_view_ptr(struct hv_host *h, uint64_t partition_id, uint32_t view_id, uint32_t *npages)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    int i = p ? find_kind(h, p->slot, view_id, true) : -1;
    if (i < 0)
        return NULL;
    *npages = h->grants[i]->npages;
    return h->grants[i]->view;
}

static struct hv_mapping *export(struct hv_grant *g, uint8_t **base, uint32_t *npages)
{
    g->map->refs++;
    *base = g->view;
    *npages = g->npages;
    return g->map;
}

struct hv_mapping *hv_grant_export(struct hv_host *h, uint64_t child_id, uint32_t grant_id, uint8_t **base,
                                   uint32_t *npages)
{
    struct hv_partition *p = child_of_root(h, child_id);
    int i = p ? find(h, p->slot, grant_id) : -1;
    return i < 0 ? NULL : export(h->grants[i], base, npages);
}

struct hv_mapping *hv_grant_export_at(struct hv_host *h, uint32_t index, uint8_t **base, uint32_t *npages)
{
    return export(h->grants[index], base, npages);
}

struct hv_mapping *hv_view_export(struct hv_host *h, uint64_t partition_id, uint32_t view_id, uint8_t **base,
                                  uint32_t *npages)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    int i = p ? find_kind(h, p->slot, view_id, true) : -1;
    return i < 0 ? NULL : export(h->grants[i], base, npages);
}

void hv_mapping_release(struct hv_mapping *m)
{
    if (m)
        mapping_put(m);
}

int hv_grant_last_refusal(struct hv_host *h, struct hv_grant_refusal *out)
{
    *out = h->grant_refusal;
    return h->grant_refusal.limit != HV_GRANT_LIMIT_NONE ? 0 : -1;
}

int hv_grant_usage(struct hv_host *h, uint64_t partition_id, struct hv_grant_usage *out)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    if (!p)
        return -1;
    *out = (struct hv_grant_usage){ p->granted_pages, pages_limit(h), p->grant_mappings, mappings_limit(h),
                                    h->grant_mappings, host_mappings_limit(h) };
    return 0;
}

uint64_t hv_teardown_visits(struct hv_host *h)
{
    return h->teardown_visits;
}
