/* host.c: host boot and teardown, the status-code table, and the introspection API.
 *
 * Introspection is for the host's owner (tests, the management layer), never for partitions:
 * no hypercall reaches these functions. The state digest covers everything a hypercall may
 * change (owners, pools, maps, partitions, VP registers and, on request, memory contents) and
 * deliberately leaves out statistics such as hypercall counters.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

uint32_t hv_core_abi_version(void) { return HV_CORE_ABI_VERSION; }

/* ---- status codes ----------------------------------------------------------------------------- */
static const struct { uint16_t code; const char *name, *message; } statuses[] = {
#define HV_STATUS_ROW(code, name, msg) {code, #name, msg},
    HV_STATUS_TABLE(HV_STATUS_ROW)
#undef HV_STATUS_ROW
};

uint32_t hv_status_count(void) { return sizeof(statuses) / sizeof(statuses[0]); }

int hv_status_at(uint32_t i, uint16_t *code, const char **name, const char **message)
{
    if (i >= hv_status_count())
        return -1;
    *code = statuses[i].code;
    *name = statuses[i].name;
    *message = statuses[i].message;
    return 0;
}

const char *hv_call_name(uint16_t code)
{
    const struct hv_call_desc *d = hv_call_lookup(code);
    return d ? d->name : NULL;
}

/* ---- boot and teardown ---------------------------------------------------------------------- */

struct hv_host *hv_host_create(const struct hv_host_config *cfg)
{
    if (cfg->memory_bytes % HV_PAGE_SIZE || cfg->memory_bytes < 64ull * HV_PAGE_SIZE ||
        cfg->logical_processors == 0 || cfg->smt == 0 || cfg->logical_processors % cfg->smt)
        return NULL;
    struct hv_host *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->cfg = *cfg;
    if (h->cfg.root_vps == 0)
        h->cfg.root_vps = cfg->logical_processors;
    if (h->cfg.root_vps > HV_MAX_VPS)
        h->cfg.root_vps = HV_MAX_VPS;
    h->next_partition_id = 1;
    /* Zero costs take the cost model's defaults (../shared/reference/cost-model.md §1). */
    struct hv_costs *c = &h->costs;
    *c = cfg->costs;
    if (!c->hypercall_ns) c->hypercall_ns = 1000;
    if (!c->parent_exit_ns) c->parent_exit_ns = 4000;
    if (!c->message_ns) c->message_ns = 1000;
    if (!c->event_ns) c->event_ns = 1000;
    if (!c->interrupt_ns) c->interrupt_ns = 1000;
    if (!c->time_slice_ns) c->time_slice_ns = 10000000;
    if (!c->window_ns) c->window_ns = 100000000;
    if (!c->stimer_min_period_ns) c->stimer_min_period_ns = 100000;
    hv_ports_init(&h->ports);
    if (hv_mem_init(h) != 0 || hv_run_init(h) != 0) {
        hv_host_destroy(h);
        return NULL;
    }
    /* The root: slot 0, created at boot, running, with the root privileges and its VPs. */
    struct hv_partition *root = hv_partition_alloc(h, 0);
    if (!root) {
        hv_host_destroy(h);
        return NULL;
    }
    root->state = HV_PARTITION_INITIALIZED;
    root->privileges = HV_PRIV_ROOT;
    root->pages_owned = h->nr_pages - HV_HV_RESERVED_PAGES;
    for (uint32_t i = 0; i < h->cfg.root_vps; i++) {
        root->vps[i] = hv_vp_alloc(i);
        if (!root->vps[i]) {
            hv_host_destroy(h);
            return NULL;
        }
        root->vps[i]->part_slot = 0;
    }
    hv_partition_set_running(h, root, true);
    return h;
}

void hv_host_destroy(struct hv_host *h)
{
    if (!h)
        return;
    for (uint32_t s = HV_MAX_PARTITIONS; s-- > 0;)
        if (h->parts[s])
            hv_partition_destroy(h, h->parts[s]);
    hv_run_fini(h);
    hv_grants_fini(h);
    hv_ports_fini(&h->ports);
    hv_mem_fini(h);
    free(h);
}

/* ---- introspection ---------------------------------------------------------------------------- */

void hv_host_totals(struct hv_host *h, struct hv_host_totals *t)
{
    memset(t, 0, sizeof(*t));
    t->pages = h->nr_pages;
    t->hv_pages = h->hv_pages;
    t->free_pages = h->free_pages.len;
    for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++)
        if (h->parts[s]) {
            t->partitions++;
            t->partition_pages += h->parts[s]->pages_owned;
        }
}

uint32_t hv_host_partitions(struct hv_host *h, uint64_t *ids, uint32_t max)
{
    uint32_t n = 0;
    for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++)
        if (h->parts[s]) {
            if (n < max)
                ids[n] = h->parts[s]->id;
            n++;
        }
    return n;
}

int hv_partition_info(struct hv_host *h, uint64_t id, struct hv_partition_info *out)
{
    struct hv_partition *p = hv_partition_by_id(h, id);
    if (!p)
        return -1;
    memset(out, 0, sizeof(*out));
    out->id = p->id;
    out->slot = p->slot;
    out->parent_id = p->slot != 0 && h->parts[p->parent_slot] ? h->parts[p->parent_slot]->id : 0;
    out->state = p->state;
    out->privileges = p->privileges;
    out->cpu_reserve = p->cpu_reserve;
    out->cpu_cap = p->cpu_cap;
    out->cpu_weight = p->cpu_weight;
    out->pages_owned = p->pages_owned;
    out->pool_free = p->pool_free.len;
    out->pool_used = p->pool_used.len;
    out->gpa_mapped = p->gpa_mapped;
    for (uint32_t i = 0; i < HV_MAX_VPS; i++)
        if (p->vps[i])
            out->vp_mask |= 1ull << i;
    out->hypercalls = p->counters.hypercalls;
    out->hypercalls_failed = p->counters.hypercalls_failed;
    out->reps = p->counters.reps;
    out->messages_dropped = p->counters.messages_dropped;
    out->run_time_ns = p->run_time_ns;
    for (uint32_t i = 0; i < HV_MAX_VPS; i++)
        if (p->vps[i] && p->vps[i]->exec == HV_VP_RUNNING)
            out->run_time_ns += h->now - p->vps[i]->dispatched_at;
    out->started = p->started;
    return 0;
}

uint64_t hv_page_owners(struct hv_host *h, uint64_t first, uint32_t *out, uint64_t count)
{
    if (first >= h->nr_pages)
        return 0;
    if (count > h->nr_pages - first)
        count = h->nr_pages - first;
    memcpy(out, h->owner + first, count * sizeof(uint32_t));
    return count;
}

uint64_t hv_pool_pages(struct hv_host *h, uint64_t id, uint64_t *out, uint64_t max)
{
    struct hv_partition *p = hv_partition_by_id(h, id);
    if (!p)
        return 0;
    uint64_t n = 0;
    for (uint64_t i = 0; i < p->pool_free.len; i++, n++)
        if (n < max) out[n] = p->pool_free.pfn[i];
    for (uint64_t i = 0; i < p->pool_used.len; i++, n++)
        if (n < max) out[n] = p->pool_used.pfn[i];
    return n;
}

uint64_t hv_partition_reach(struct hv_host *h, uint64_t id, uint64_t *gpas, uint64_t *pfns,
                            uint32_t *rights, uint64_t max)
{
    struct hv_partition *p = hv_partition_by_id(h, id);
    if (!p)
        return 0;
    uint64_t n = 0;
    if (p->slot == 0) {
        for (uint64_t pfn = 0; pfn < h->nr_pages; pfn++) {
            uint32_t have = hv_root_rights(h, pfn);
            if (!have)
                continue;
            if (n < max) {
                gpas[n] = pfn;
                pfns[n] = pfn;
                rights[n] = have;
            }
            n++;
        }
        return n;
    }
    for (uint64_t r = 0; r < HV_MAX_GPA_PAGES / HV_LEAF_ENTRIES; r++) {
        if (!p->gpa_leaf[r])
            continue;
        const uint64_t *t = (const uint64_t *)(const void *)hv_spa_page(h, p->gpa_leaf[r]);
        for (uint32_t i = 0; i < HV_LEAF_ENTRIES; i++) {
            if (!(t[i] & HV_PTE_PRESENT))
                continue;
            if (n < max) {
                gpas[n] = r * HV_LEAF_ENTRIES + i;
                pfns[n] = t[i] >> HV_PAGE_SHIFT;
                rights[n] = (uint32_t)(t[i] >> HV_PTE_RIGHTS_SHIFT) & HV_MAP_GPA_VALID_MASK;
            }
            n++;
        }
    }
    return n;
}

int hv_partition_read(struct hv_host *h, uint64_t id, uint64_t gpa, uint8_t *buf, size_t len)
{
    struct hv_partition *p = hv_partition_by_id(h, id);
    return p && hv_guest_read(h, p, gpa, buf, len) ? 0 : -1;
}

int hv_partition_write(struct hv_host *h, uint64_t id, uint64_t gpa, const uint8_t *buf, size_t len)
{
    struct hv_partition *p = hv_partition_by_id(h, id);
    return p && hv_guest_write(h, p, gpa, buf, len) ? 0 : -1;
}

/* ---- the state digest ------------------------------------------------------------------------ */
#define digest hv_digest
#define dg hv_digest_u64

static void dg_list(struct digest *d, const struct hv_page_list *l)
{
    dg(d, l->len);
    for (uint64_t i = 0; i < l->len; i++)
        dg(d, l->pfn[i]);
}

void hv_state_digest(struct hv_host *h, int include_memory, uint8_t *out)
{
    struct digest d;
    hv_digest_init(&d);
    dg(&d, h->nr_pages);
    dg(&d, h->next_partition_id);
    dg(&d, h->hv_pages);
    dg_list(&d, &h->free_pages);
    for (uint64_t pfn = 0; pfn < h->nr_pages; pfn++)
        if (h->owner[pfn] != 0) { /* untouched (root-owned) entries dominate a large host */
            dg(&d, pfn);
            dg(&d, h->owner[pfn]);
        }
    for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++) {
        if (!(h->slots_used[s / 64] >> (s % 64))) { /* no partition in the rest of this word */
            s |= 63;
            continue;
        }
        struct hv_partition *p = h->parts[s];
        if (!p)
            continue;
        dg(&d, s);
        dg(&d, p->id);
        dg(&d, p->parent_slot);
        dg(&d, p->state);
        dg(&d, p->started);
        dg(&d, p->privileges);
        dg(&d, ((uint64_t)p->cpu_reserve << 40) | ((uint64_t)p->cpu_cap << 20) | p->cpu_weight);
        dg(&d, p->pages_owned);
        dg(&d, p->gpa_mapped);
        dg(&d, p->hypercall_msr);
        dg_list(&d, &p->pool_free);
        dg_list(&d, &p->pool_used);
        for (uint32_t i = 0; i < HV_MAX_VPS; i++) {
            struct hv_vp *vp = p->vps[i];
            if (!vp)
                continue;
            dg(&d, i);
            dg(&d, vp->pool_page);
            for (int r = 0; r < 16; r++)
                dg(&d, vp->gp[r]);
            dg(&d, vp->rip);
            dg(&d, vp->rflags);
            dg(&d, vp->cr0);
            dg(&d, vp->cr3);
            dg(&d, vp->cr4);
            dg(&d, vp->guest_os_id);
            hv_synic_digest(&vp->synic, &d);
        }
        /* GPA maps live in leaf pages; those are hashed with memory below, and their
         * presence per region here. The leaves' entry counts add up to gpa_mapped (memory.c
         * keeps both), so the walk ends at the last leaf, not at the end of the 64 GiB space. */
        if (p->gpa_leaf)
            for (uint64_t r = 0, seen = 0; seen < p->gpa_mapped && r < HV_MAX_GPA_PAGES / HV_LEAF_ENTRIES; r++)
                if (p->gpa_leaf[r]) {
                    seen += p->gpa_leaf_count[r];
                    dg(&d, r);
                    dg(&d, p->gpa_leaf[r]);
                    const uint64_t *t = (const uint64_t *)(const void *)hv_spa_page(h, p->gpa_leaf[r]);
                    for (uint32_t i = 0; i < HV_LEAF_ENTRIES; i++)
                        dg(&d, t[i]);
                }
    }
    hv_ports_digest(&h->ports, &d);
    hv_grants_digest(h, &d);
    hv_visibility_digest(h, &d);
    hv_pager_digest(h, &d);
    if (include_memory) {
        for (uint64_t pfn = 0; pfn < h->nr_pages; pfn++) {
            if (!((h->dirty[pfn / 64] >> (pfn % 64)) & 1))
                continue;
            const uint8_t *pg = hv_spa_page(h, pfn);
            dg(&d, pfn);
            for (uint32_t i = 0; i < HV_PAGE_SIZE; i += 8)
                dg(&d, hv_load64(pg + i));
        }
    }
    memcpy(out, &d.a, 8);
    memcpy(out + 8, &d.b, 8);
}
