/* visibility.c: host visibility, how a child shows pages of its own to its parent without a grant:
 * HvCallModifySparseGpaPageHostVisibility (0x00DB), the call Linux's isolated guests make
 * (hv_mark_gpa_visibility) before they bounce device I/O through those pages, and the parent's
 * access to such pages (views and one-off copies).
 *
 * Invariants: host_vis[pfn] is non-zero only for a page a child owns and maps (it is reset when
 * the page changes owner, memory.c), and only that child's hypercall sets it; the parent reaches
 * a child's page only through a live grant or this mark, with no more access than the mark gives
 * (hv_root_rights); a host-visible view exists only while every page of it is visible enough: the
 * call that lowers a page's visibility revokes every view that needs more, before it returns, so
 * the parent loses access at once (its view pages read zeros, as a revoked grant's do).
 */
#include <string.h>

#include "core.h"

static struct hv_partition *child_of_root(struct hv_host *h, uint64_t child_id)
{
    struct hv_partition *p = hv_partition_by_id(h, child_id);
    return p && p->slot != 0 && p->parent_slot == 0 ? p : NULL;
}

/* Revoke the child's host-visible views that name a page no longer visible enough for them. */
static void revoke_invisible(struct hv_host *h, uint32_t slot)
{
    for (uint32_t i = 0; i < h->nr_grants;) {
        const struct hv_grant *g = h->grants[i];
        bool keep = true;
        for (uint32_t k = 0; g->child_slot == slot && g->visible && k < g->npages && keep; k++)
            keep = (h->host_vis[g->pfns[k]] & g->visible) == g->visible;
        if (keep)
            i++;
        else
            hv_grant_drop(h, i); /* the next view moves to index i */
    }
}

/* ---- the hypercall ------------------------------------------------------------------------------ */

uint16_t hv_call_modify_host_visibility(struct hv_call *c)
{
    struct hv_in_modify_host_visibility in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = c->caller;
    /* Visibility is the owner's choice: a parent naming its child is refused (it decides what the
     * child may see, not what the child shows); an id it cannot name at all is invalid. */
    if (in.partition_id != HV_PARTITION_ID_SELF && in.partition_id != p->id)
        return hv_call_target(c, in.partition_id, false) ? HV_STATUS_ACCESS_DENIED : HV_STATUS_INVALID_PARTITION_ID;
    if (p->slot == 0)
        return HV_STATUS_ACCESS_DENIED; /* the root is the host: it has nobody to show pages to */
    uint32_t vis = in.host_visibility & HV_HOST_VISIBILITY_MASK;
    if ((in.host_visibility & ~HV_HOST_VISIBILITY_MASK) || in.reserved != 0 || vis == 2)
        return HV_STATUS_INVALID_PARAMETER;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t gpa = hv_load64(c->in + sizeof(in) + (size_t)i * 8);
        uint64_t e = hv_gpa_entry(c->h, p, gpa);
        if (!(e & HV_PTE_PRESENT))
            return HV_STATUS_INVALID_PARAMETER; /* not a page of the caller */
        /* The parent reaches a host-visible page without the core: one that has not arrived yet
         * (post-copy) is fetched first, or the call fails as for a page not mapped (pager.c). */
        if (vis && !hv_pager_present(c->h, p, gpa, e >> HV_PAGE_SHIFT))
            return HV_STATUS_INVALID_PARAMETER;
    }
    /* apply: nothing below can fail (a page named twice simply ends with the same mark) */
    bool lowered = false;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        uint64_t pfn = hv_gpa_entry(c->h, p, hv_load64(c->in + sizeof(in) + (size_t)i * 8)) >> HV_PAGE_SHIFT;
        /* 0 < 1 < 3 orders the access each value gives: a smaller value takes access away. */
        lowered |= vis < c->h->host_vis[pfn];
        c->h->host_vis[pfn] = (uint8_t)vis;
    }
    if (lowered)
        revoke_invisible(c->h, p->slot);
    return HV_STATUS_SUCCESS;
}

/* ---- the parent's access --------------------------------------------------------------------- */

uint16_t hv_visible_view_create(struct hv_host *h, uint64_t child_id, uint32_t view_id, const uint64_t *gpa_pages,
                                uint32_t count, uint32_t access, uint64_t *bad_page)
{
    struct hv_partition *p = child_of_root(h, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (access != HV_HOST_VISIBILITY_READ_ONLY && access != HV_HOST_VISIBILITY_READ_WRITE)
        return HV_STATUS_INVALID_PARAMETER;
    return hv_grant_make(h, p, view_id, gpa_pages, count, (uint8_t)access, bad_page);
}

uint16_t hv_visible_view_release(struct hv_host *h, uint64_t child_id, uint32_t view_id)
{
    struct hv_partition *p = child_of_root(h, child_id);
    int i = p ? hv_grant_find_visible(h, p->slot, view_id) : -1;
    if (i < 0)
        return p ? HV_STATUS_INVALID_PARAMETER : HV_STATUS_INVALID_PARTITION_ID;
    hv_grant_drop(h, (uint32_t)i);
    return HV_STATUS_SUCCESS;
}

struct hv_mapping *hv_visible_view_export(struct hv_host *h, uint64_t child_id, uint32_t view_id, uint8_t **base,
                                          uint32_t *npages, uint32_t *access)
{
    struct hv_partition *p = child_of_root(h, child_id);
    int i = p ? hv_grant_find_visible(h, p->slot, view_id) : -1;
    if (i < 0)
        return NULL;
    *access = h->grants[i]->visible;
    return hv_grant_export_at(h, (uint32_t)i, base, npages);
}

uint32_t hv_visible_view_ids(struct hv_host *h, uint64_t child_id, uint32_t *ids, uint32_t max)
{
    struct hv_partition *p = child_of_root(h, child_id);
    uint32_t n = 0;
    for (uint32_t i = 0; p && i < h->nr_grants; i++)
        if (h->grants[i]->child_slot == p->slot && h->grants[i]->visible) {
            if (n < max)
                ids[n] = h->grants[i]->id;
            n++;
        }
    return n;
}

int hv_visible_check(struct hv_host *h, uint64_t child_id, const uint64_t *gpa_pages, uint32_t count,
                     uint32_t access, uint64_t *bad_page)
{
    struct hv_partition *p = child_of_root(h, child_id);
    if (!p)
        return -1;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t e = hv_gpa_entry(h, p, gpa_pages[i]);
        if (!(e & HV_PTE_PRESENT) || (h->host_vis[e >> HV_PAGE_SHIFT] & access) != access || !access) {
            *bad_page = gpa_pages[i];
            return 1;
        }
    }
    return 0;
}

uint16_t hv_visible_copy(struct hv_host *h, uint64_t child_id, const uint64_t *gpa_pages, uint32_t count,
                         uint64_t offset, uint8_t *buf, uint64_t len, int write, uint64_t *bad_page)
{
    struct hv_partition *p = child_of_root(h, child_id);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (offset > (uint64_t)count * HV_PAGE_SIZE || len > (uint64_t)count * HV_PAGE_SIZE - offset)
        return HV_STATUS_INVALID_PARAMETER;
    if (len == 0)
        return HV_STATUS_SUCCESS;
    uint32_t first = (uint32_t)(offset >> HV_PAGE_SHIFT), last = (uint32_t)((offset + len - 1) >> HV_PAGE_SHIFT);
    uint32_t access = write ? HV_HOST_VISIBILITY_READ_WRITE : HV_HOST_VISIBILITY_READ_ONLY;
    /* decode: every page the copy touches, before a byte moves */
    if (hv_visible_check(h, child_id, gpa_pages + first, last - first + 1, access, bad_page))
        return HV_STATUS_ACCESS_DENIED;
    for (uint64_t done = 0; done < len;) {
        uint64_t at = offset + done, n = HV_PAGE_SIZE - (at & (HV_PAGE_SIZE - 1));
        if (n > len - done)
            n = len - done;
        uint64_t pfn = hv_gpa_entry(h, p, gpa_pages[at >> HV_PAGE_SHIFT]) >> HV_PAGE_SHIFT;
        uint8_t *page = hv_spa_page(h, pfn) + (at & (HV_PAGE_SIZE - 1));
        if (write) {
            memcpy(page, buf + done, n);
            hv_page_mark_dirty(h, pfn);
        } else {
            memcpy(buf + done, page, n);
        }
        done += n;
    }
    return HV_STATUS_SUCCESS;
}

/* ---- introspection --------------------------------------------------------------------------- */

uint64_t hv_host_visible_pages(struct hv_host *h, uint64_t child_id, uint64_t *gpas, uint8_t *visibility,
                               uint64_t max)
{
    struct hv_partition *p = child_of_root(h, child_id);
    uint64_t n = 0;
    if (!p || !p->gpa_leaf)
        return 0;
    for (uint64_t r = 0; r < HV_MAX_GPA_PAGES / HV_LEAF_ENTRIES; r++) {
        if (!p->gpa_leaf[r])
            continue;
        const uint64_t *t = (const uint64_t *)(const void *)hv_spa_page(h, p->gpa_leaf[r]);
        for (uint32_t i = 0; i < HV_LEAF_ENTRIES; i++) {
            if (!(t[i] & HV_PTE_PRESENT) || !h->host_vis[t[i] >> HV_PAGE_SHIFT])
                continue;
            if (n < max) {
                gpas[n] = r * HV_LEAF_ENTRIES + i;
                visibility[n] = h->host_vis[t[i] >> HV_PAGE_SHIFT];
            }
            n++;
        }
    }
    return n;
}

void hv_visibility_digest(const struct hv_host *h, struct hv_digest *d)
{
    /* Every marked page, by SPA frame: marks live only on pages children own, so this is each
     * child's choice exactly. */
    for (uint64_t pfn = 0; pfn < h->nr_pages; pfn += 8) {
        uint64_t word = 0; /* eight marks at a time: nearly every page has none */
        memcpy(&word, h->host_vis + pfn, pfn + 8 <= h->nr_pages ? 8 : h->nr_pages - pfn);
        for (uint64_t k = pfn; word; k++, word >>= 8)
            if (word & 0xFF) {
                hv_digest_u64(d, k);
                hv_digest_u64(d, word & 0xFF);
            }
    }
}
