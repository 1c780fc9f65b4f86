/* memory.c: host physical memory (the SPA space), page ownership, GPA maps and a partition's
 * access to its own memory.
 *
 * Invariants kept here:
 *  - every SPA page has exactly one owner code (a partition slot, HV_OWNER_FREE or HV_OWNER_HV);
 *  - a page changes owner only through hv_page_set_owner, which zeroes it first, so nothing a
 *    partition wrote ever reaches another owner;
 *  - a child's GPA map names only pages the child owns; its leaf tables live in pages of its
 *    pool (owner HV), so no partition can reach them;
 *  - no store (a guest's, or the core's into guest memory) reaches a GPA page the hypercall page
 *    overlays, and loads there see the overlay (overlay.c).
 * The SPA space is a sparse memory file (memfd) mapped once; the owner table, the dirty bitmap
 * and the grant counts are MAP_NORESERVE mappings: a 64 GiB host costs only the pages something
 * has touched. The memory file lets the core map any set of SPA pages contiguously (a grant's
 * view, as Linux vmaps a VMBus ring), so ring code runs on guest pages with no copy.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core.h"

static void *reserve(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

int hv_mem_init(struct hv_host *h)
{
    h->nr_pages = h->cfg.memory_bytes >> HV_PAGE_SHIFT;
    h->spa_fd = memfd_create("hvsim-spa", MFD_CLOEXEC);
    if (h->spa_fd < 0 || ftruncate(h->spa_fd, (off_t)(h->nr_pages << HV_PAGE_SHIFT)) != 0)
        return -1;
    void *spa = mmap(NULL, h->nr_pages << HV_PAGE_SHIFT, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE,
                     h->spa_fd, 0);
    h->spa = spa == MAP_FAILED ? NULL : spa;
    h->owner = reserve(h->nr_pages * sizeof(uint32_t));
    h->dirty = reserve(((h->nr_pages + 63) / 64) * sizeof(uint64_t));
    h->absent = reserve(((h->nr_pages + 63) / 64) * sizeof(uint64_t));
    h->grant_refs = reserve(h->nr_pages * sizeof(uint16_t));
    h->pin_refs = reserve(h->nr_pages * sizeof(uint16_t));
    h->host_vis = reserve(h->nr_pages);
    if (!h->spa || !h->owner || !h->dirty || !h->absent || !h->grant_refs || !h->pin_refs || !h->host_vis)
        return -1;
    /* The hypervisor keeps the lowest pages (SPA pfn 0 among them, which is why 0 can mean
     * "no leaf table" in GPA maps); the root owns the rest through the all-zero table. */
    for (uint64_t pfn = 0; pfn < HV_HV_RESERVED_PAGES; pfn++)
        h->owner[pfn] = HV_OWNER_HV;
    h->hv_pages = HV_HV_RESERVED_PAGES;
    return 0;
}

void hv_mem_fini(struct hv_host *h)
{
    if (h->spa) munmap(h->spa, h->nr_pages << HV_PAGE_SHIFT);
    if (h->owner) munmap(h->owner, h->nr_pages * sizeof(uint32_t));
    if (h->dirty) munmap(h->dirty, ((h->nr_pages + 63) / 64) * sizeof(uint64_t));
    if (h->absent) munmap(h->absent, ((h->nr_pages + 63) / 64) * sizeof(uint64_t));
    if (h->grant_refs) munmap(h->grant_refs, h->nr_pages * sizeof(uint16_t));
    if (h->pin_refs) munmap(h->pin_refs, h->nr_pages * sizeof(uint16_t));
    if (h->host_vis) munmap(h->host_vis, h->nr_pages);
    if (h->spa_fd > 0) close(h->spa_fd);
    hv_page_list_free(&h->free_pages);
}

uint8_t *hv_spa_page(struct hv_host *h, uint64_t pfn)
{
    return h->spa + (pfn << HV_PAGE_SHIFT);
}

void hv_page_mark_dirty(struct hv_host *h, uint64_t pfn)
{
    h->dirty[pfn / 64] |= 1ull << (pfn % 64);
    if (__builtin_expect(h->dirty_logs != 0, 0))
        hv_dirty_log_mark(h, pfn); /* a parent tracks some partition's writes (dirty.c) */
}

static bool page_dirty(const struct hv_host *h, uint64_t pfn)
{
    return (h->dirty[pfn / 64] >> (pfn % 64)) & 1;
}

static struct hv_partition *owner_partition(struct hv_host *h, uint32_t owner)
{
    return owner < HV_MAX_PARTITIONS ? h->parts[owner] : NULL;
}

void hv_page_set_owner(struct hv_host *h, uint64_t pfn, uint32_t owner)
{
    if (page_dirty(h, pfn)) {
        memset(hv_spa_page(h, pfn), 0, HV_PAGE_SIZE);
        h->dirty[pfn / 64] &= ~(1ull << (pfn % 64));
    }
    h->host_vis[pfn] = HV_HOST_VISIBILITY_NONE; /* a child's choice ends with its ownership */
    if (hv_page_absent(h, pfn))
        hv_pager_forget(h, pfn); /* (zeroed above or never written: nothing to fetch any more) */
    uint32_t old = h->owner[pfn];
    struct hv_partition *from = owner_partition(h, old), *to = owner_partition(h, owner);
    if (from) from->pages_owned--;
    if (to) to->pages_owned++;
    if (old == HV_OWNER_HV) h->hv_pages--;
    if (owner == HV_OWNER_HV) h->hv_pages++;
    h->owner[pfn] = owner;
}

bool hv_page_list_reserve(struct hv_page_list *l, uint64_t extra)
{
    if (l->len + extra <= l->cap)
        return true;
    uint64_t cap = l->cap ? l->cap : 16;
    while (cap < l->len + extra)
        cap *= 2;
    uint64_t *n = realloc(l->pfn, cap * sizeof(uint64_t));
    if (!n)
        return false;
    l->pfn = n;
    l->cap = cap;
    return true;
}

bool hv_page_list_push(struct hv_page_list *l, uint64_t pfn)
{
    if (!hv_page_list_reserve(l, 1))
        return false;
    l->pfn[l->len++] = pfn;
    return true;
}

void hv_page_list_free(struct hv_page_list *l)
{
    free(l->pfn);
    l->pfn = NULL;
    l->len = l->cap = 0;
}

/* ---- GPA maps ------------------------------------------------------------------------------- */

static uint64_t *leaf_table(struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page)
{
    uint64_t leaf = p->gpa_leaf[gpa_page / HV_LEAF_ENTRIES];
    return leaf ? (uint64_t *)(void *)hv_spa_page(h, leaf) : NULL;
}

uint64_t hv_gpa_entry(const struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page)
{
    if (!p->gpa_leaf || gpa_page >= HV_MAX_GPA_PAGES)
        return 0;
    uint64_t *t = leaf_table((struct hv_host *)h, p, gpa_page);
    return t ? t[gpa_page % HV_LEAF_ENTRIES] : 0;
}

bool hv_gpa_translate(struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page,
                      uint32_t rights, uint64_t *pfn)
{
    /* The hypercall page overlays this GPA page: no store reaches the page under it (overlay.c). */
    if ((rights & HV_MAP_GPA_WRITABLE) && hv_overlay_covers(p, gpa_page))
        return false;
    if (p->slot == 0) {
        /* The root sees its own pages, pages its children granted it and pages they made host
         * visible (with the access they chose), at GPA == SPA. */
        if (gpa_page >= h->nr_pages || (hv_root_rights(h, gpa_page) & rights) != rights ||
            !hv_root_rights(h, gpa_page))
            return false;
        *pfn = gpa_page;
        return true;
    }
    uint64_t e = hv_gpa_entry(h, p, gpa_page);
    if (!(e & HV_PTE_PRESENT))
        return false;
    uint32_t have = (uint32_t)(e >> HV_PTE_RIGHTS_SHIFT) & HV_MAP_GPA_VALID_MASK;
    if ((have & rights) != rights)
        return false;
    *pfn = e >> HV_PAGE_SHIFT;
    /* An access to a page that has not arrived yet (post-copy) fetches it first (pager.c); a
     * lookup that asks for no right touches no byte and fetches nothing. */
    if (hv_page_absent(h, *pfn) && rights)
        return hv_pager_fault(h, p, gpa_page, *pfn);
    return true;
}

uint32_t hv_gpa_new_leaves(const struct hv_host *h, const struct hv_partition *p,
                           uint64_t first, uint64_t count)
{
    (void)h;
    uint32_t n = 0;
    if (count == 0)
        return 0;
    for (uint64_t r = first / HV_LEAF_ENTRIES; r <= (first + count - 1) / HV_LEAF_ENTRIES; r++)
        if (!p->gpa_leaf[r])
            n++;
    return n;
}

void hv_gpa_map(struct hv_host *h, struct hv_partition *p, uint64_t gpa_page, uint64_t pfn, uint32_t rights)
{
    uint64_t r = gpa_page / HV_LEAF_ENTRIES;
    if (!p->gpa_leaf[r])
        p->gpa_leaf[r] = hv_pool_take(h, p); /* the caller checked the pool holds enough */
    uint64_t *t = (uint64_t *)(void *)hv_spa_page(h, p->gpa_leaf[r]);
    hv_page_mark_dirty(h, p->gpa_leaf[r]);
    t[gpa_page % HV_LEAF_ENTRIES] = (pfn << HV_PAGE_SHIFT) |
                                    ((uint64_t)rights << HV_PTE_RIGHTS_SHIFT) | HV_PTE_PRESENT;
    p->gpa_leaf_count[r]++;
    p->gpa_mapped++;
    hv_dirty_log_mapped(p, pfn);
}

uint64_t hv_gpa_unmap(struct hv_host *h, struct hv_partition *p, uint64_t gpa_page)
{
    uint64_t r = gpa_page / HV_LEAF_ENTRIES;
    uint64_t *t = leaf_table(h, p, gpa_page);
    uint64_t pfn = t[gpa_page % HV_LEAF_ENTRIES] >> HV_PAGE_SHIFT;
    t[gpa_page % HV_LEAF_ENTRIES] = 0;
    p->gpa_mapped--;
    if (--p->gpa_leaf_count[r] == 0) {
        /* An empty leaf table goes back to the pool, so map/unmap cycles do not leak pages. */
        hv_pool_give_back(h, p, p->gpa_leaf[r]);
        p->gpa_leaf[r] = 0;
    }
    return pfn;
}

/* ---- the memory pool ------------------------------------------------------------------------- */

uint64_t hv_pool_take(struct hv_host *h, struct hv_partition *p)
{
    uint64_t pfn = p->pool_free.pfn[--p->pool_free.len];
    hv_page_list_push(&p->pool_used, pfn); /* capacity reserved by the caller's decode step */
    (void)h;
    return pfn;
}

void hv_pool_give_back(struct hv_host *h, struct hv_partition *p, uint64_t pfn)
{
    for (uint64_t i = 0; i < p->pool_used.len; i++) {
        if (p->pool_used.pfn[i] == pfn) {
            p->pool_used.pfn[i] = p->pool_used.pfn[--p->pool_used.len];
            break;
        }
    }
    /* Zero now: whatever the hypervisor kept there must not survive into the next use. */
    hv_page_set_owner(h, pfn, HV_OWNER_HV);
    hv_page_list_push(&p->pool_free, pfn); /* never grows past its earlier length */
}

/* ---- a partition's access to its own memory -------------------------------------------------- */

static bool guest_copy(struct hv_host *h, const struct hv_partition *p, uint64_t gpa, uint8_t *buf,
                       size_t len, bool write)
{
    uint32_t rights = write ? HV_MAP_GPA_WRITABLE : HV_MAP_GPA_READABLE;
    /* Check every page first, so a fault part-way leaves memory unchanged. */
    for (uint64_t a = gpa & ~(uint64_t)(HV_PAGE_SIZE - 1); a < gpa + len; a += HV_PAGE_SIZE) {
        uint64_t pfn;
        if (gpa + len < gpa || !hv_gpa_translate(h, p, a >> HV_PAGE_SHIFT, rights, &pfn))
            return false;
    }
    size_t done = 0;
    while (done < len) {
        uint64_t a = gpa + done, pfn = 0;
        size_t off = a & (HV_PAGE_SIZE - 1), n = HV_PAGE_SIZE - off;
        if (n > len - done)
            n = len - done;
        hv_gpa_translate(h, p, a >> HV_PAGE_SHIFT, rights, &pfn);
        if (!write && hv_overlay_covers(p, a >> HV_PAGE_SHIFT)) {
            hv_overlay_read(off, buf + done, n); /* a load sees the overlay, not the page under it */
        } else if (write) {
            memcpy(hv_spa_page(h, pfn) + off, buf + done, n);
            hv_page_mark_dirty(h, pfn);
        } else {
            memcpy(buf + done, hv_spa_page(h, pfn) + off, n);
        }
        done += n;
    }
    return true;
}

bool hv_guest_read(struct hv_host *h, const struct hv_partition *p, uint64_t gpa, void *buf, size_t len)
{
    return guest_copy(h, p, gpa, buf, len, false);
}

bool hv_guest_write(struct hv_host *h, const struct hv_partition *p, uint64_t gpa, const void *buf, size_t len)
{
    return guest_copy(h, p, gpa, (uint8_t *)buf, len, true);
}
