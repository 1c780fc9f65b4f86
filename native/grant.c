/* grant.c: grants, the only cross-partition memory access: a child's pages made reachable by its
 * parent (the core's half of a VMBus GPADL).
 *
 * Invariants: a grant names only pages mapped in its child at creation; while any grant names a
 * page (grant_refs > 0) the page is pinned: it cannot be unmapped, withdrawn or change owner;
 * the parent reaches exactly its own pages plus the pages of live grants (INV-REACH-PARENT).
 * A revoked grant's view is replaced by private zero pages rather than unmapped, so a stale
 * pointer into it can never reach SPA memory again.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"

#define HV_GRANT_PAGES_PER_CHILD (1280u * 256u) /* 1,280 MiB (Hyper-V WS2019+ GPADL limit) */

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
        if (h->grants[i]->child_slot == slot && h->grants[i]->id == id && h->grants[i]->own == own)
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
    uint64_t n = 0;
    for (uint32_t i = 0; p && i < h->nr_grants; i++)
        if (h->grants[i]->child_slot == p->slot && !h->grants[i]->own)
            n += h->grants[i]->npages;
    return n;
}

static uint8_t *map_view(struct hv_host *h, const uint64_t *pfns, uint32_t n)
{
    size_t len = (size_t)n << HV_PAGE_SHIFT;
    uint8_t *base = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        void *at = mmap(base + ((size_t)i << HV_PAGE_SHIFT), HV_PAGE_SIZE, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_FIXED, h->spa_fd, (off_t)(pfns[i] << HV_PAGE_SHIFT));
        if (at == MAP_FAILED) {
            munmap(base, len);
            return NULL;
        }
    }
    return base;
}

static uint16_t create(struct hv_host *h, struct hv_partition *p, uint32_t grant_id, const uint64_t *gpa_pages,
                       uint32_t count, bool own)
{
    if (count == 0 || count > HV_GRANT_PAGES_PER_CHILD || find_kind(h, p->slot, grant_id, own) >= 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (!own && hv_granted_pages(h, p->id) + count > HV_GRANT_PAGES_PER_CHILD)
        return HV_STATUS_NO_RESOURCES;
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
        pfns[i] = e >> HV_PAGE_SHIFT;
        gpas[i] = gpa_pages[i];
        for (uint32_t j = 0; j < i; j++)
            if (gpas[j] == gpas[i])
                goto fail_param;
    }
    if (h->nr_grants == h->cap_grants) {
        uint32_t cap = h->cap_grants ? h->cap_grants * 2 : 16;
        struct hv_grant **n = realloc(h->grants, cap * sizeof(*n));
        if (!n)
            goto fail;
        h->grants = n;
        h->cap_grants = cap;
    }
    g->view = map_view(h, pfns, count);
    if (!g->view)
        goto fail;
    /* apply */
    g->child_slot = p->slot;
    g->own = own;
    g->id = grant_id;
    g->npages = count;
    g->pfns = pfns;
    g->gpas = gpas;
    for (uint32_t i = 0; i < count; i++) {
        h->pin_refs[pfns[i]]++;
        if (!own)
            h->grant_refs[pfns[i]]++;
        /* Writes through the view bypass the core's copy paths: assume the page dirty, so it is
         * zeroed before it ever changes owner. */
        hv_page_mark_dirty(h, pfns[i]);
    }
    h->grants[h->nr_grants++] = g;
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
    return p ? create(h, p, grant_id, gpa_pages, count, false) : HV_STATUS_INVALID_PARTITION_ID;
}

uint16_t hv_view_create(struct hv_host *h, uint64_t partition_id, uint32_t view_id, const uint64_t *gpa_pages,
                        uint32_t count)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    if (!p || p->slot == 0)
        return HV_STATUS_INVALID_PARTITION_ID; /* the root sees its memory at GPA == SPA already */
    return create(h, p, view_id, gpa_pages, count, true);
}

static void drop(struct hv_host *h, uint32_t index)
{
    struct hv_grant *g = h->grants[index];
    for (uint32_t i = 0; i < g->npages; i++) {
        h->pin_refs[g->pfns[i]]--;
        if (!g->own)
            h->grant_refs[g->pfns[i]]--;
    }
    /* Keep the address range, but as private zero pages: see the invariant above. */
    mmap(g->view, (size_t)g->npages << HV_PAGE_SHIFT, PROT_READ | PROT_WRITE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    memmove(&h->grants[index], &h->grants[index + 1], (h->nr_grants - index - 1) * sizeof(g));
    h->nr_grants--;
    free(g->pfns);
    free(g->gpas);
    free(g);
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

void hv_grants_drop_partition(struct hv_host *h, uint32_t slot)
{
    for (uint32_t i = h->nr_grants; i-- > 0;)
        if (h->grants[i]->child_slot == slot)
            drop(h, i);
}

void hv_grants_fini(struct hv_host *h)
{
    while (h->nr_grants)
        drop(h, h->nr_grants - 1);
    free(h->grants);
}

void hv_grants_digest(const struct hv_host *h, struct hv_digest *d)
{
    hv_digest_u64(d, h->nr_grants);
    for (uint32_t i = 0; i < h->nr_grants; i++) {
        const struct hv_grant *g = h->grants[i];
        hv_digest_u64(d, ((uint64_t)g->child_slot << 32) | g->id);
        hv_digest_u64(d, g->own);
        for (uint32_t k = 0; k < g->npages; k++)
            hv_digest_u64(d, g->pfns[k]);
    }
}

uint32_t hv_grant_ids(struct hv_host *h, uint64_t child_id, uint32_t *ids, uint32_t max)
{
    struct hv_partition *p = hv_partition_by_id(h, child_id);
    uint32_t n = 0;
    for (uint32_t i = 0; p && i < h->nr_grants; i++)
        if (h->grants[i]->child_slot == p->slot && !h->grants[i]->own) {
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
