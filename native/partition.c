/* partition.c: partitions, their lifecycle hypercalls and their properties.
 *
 * Lifecycle: CreatePartition -> (SetPartitionProperty) -> InitializePartition -> CreateVp,
 * MapGpaPages ... -> FinalizePartition -> DeletePartition. A partition is created by its parent
 * (only the root holds CreatePartitions, so the hierarchy is one level deep) and every call that
 * names another partition must name a child of the caller.
 */
#define _GNU_SOURCE /* MAP_ANONYMOUS */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"

/* ---- partitions by id and by slot ------------------------------------------------------------
 * Ids are handed out in ascending order and never reused; slots are reused, the lowest free one
 * first. Both lookups are O(1): a bitmap of used slots (HV_MAX_PARTITIONS / 64 words) and an open
 * addressing table of live ids, twice as large as the number of slots so it is never more than
 * half full. Deletion shifts the following entries of the probe run back (no tombstones), so a
 * lookup of a deleted (stale) id ends at an empty entry and finds nothing. */
static uint32_t id_home(uint64_t id)
{
    return (uint32_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (HV_ID_TABLE_SIZE - 1);
}

static void id_insert(struct hv_host *h, struct hv_partition *p)
{
    uint32_t i = id_home(p->id);
    while (h->by_id[i])
        i = (i + 1) & (HV_ID_TABLE_SIZE - 1);
    h->by_id[i] = p;
}

static void id_remove(struct hv_host *h, const struct hv_partition *p)
{
    uint32_t i = id_home(p->id);
    while (h->by_id[i] != p)
        i = (i + 1) & (HV_ID_TABLE_SIZE - 1);
    /* Backward shift: move up every later entry of the run whose home is not in (i, j], so every
     * entry stays reachable from its home without crossing an empty one. */
    for (uint32_t j = (i + 1) & (HV_ID_TABLE_SIZE - 1); h->by_id[j]; j = (j + 1) & (HV_ID_TABLE_SIZE - 1)) {
        uint32_t home = id_home(h->by_id[j]->id);
        bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        h->by_id[i] = h->by_id[j];
        i = j;
    }
    h->by_id[i] = NULL;
}

static uint32_t free_slot(const struct hv_host *h)
{
    for (uint32_t w = 0; w < HV_MAX_PARTITIONS / 64; w++)
        if (~h->slots_used[w])
            return w * 64 + (uint32_t)__builtin_ctzll(~h->slots_used[w]);
    return HV_MAX_PARTITIONS;
}

/* A child's GPA directory spans its whole GPA space (320 KiB with the counts) while a VM uses
 * a few of its entries: it is mapped zero-filled on demand, so only the pages in use take
 * memory. calloc could hand back heap memory it must clear, all of it at once (at 1,024 idle
 * VMs that was a third of each VM's resident memory). */
static void *directory_alloc(size_t bytes)
{
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}

static void directory_free(void *m, size_t bytes)
{
    if (m)
        munmap(m, bytes);
}

#define DIRECTORY_ENTRIES (HV_MAX_GPA_PAGES / HV_LEAF_ENTRIES)

struct hv_partition *hv_partition_alloc(struct hv_host *h, uint32_t parent_slot)
{
    uint32_t slot = free_slot(h);
    if (slot == HV_MAX_PARTITIONS)
        return NULL;
    struct hv_partition *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    if (slot != 0) {
        p->gpa_leaf = directory_alloc(DIRECTORY_ENTRIES * sizeof(uint64_t));
        p->gpa_leaf_count = directory_alloc(DIRECTORY_ENTRIES * sizeof(uint16_t));
        if (!p->gpa_leaf || !p->gpa_leaf_count) {
            directory_free(p->gpa_leaf, DIRECTORY_ENTRIES * sizeof(uint64_t));
            directory_free(p->gpa_leaf_count, DIRECTORY_ENTRIES * sizeof(uint16_t));
            free(p);
            return NULL;
        }
    }
    p->id = h->next_partition_id++;
    p->slot = slot;
    p->parent_slot = parent_slot;
    p->state = HV_PARTITION_CREATED;
    p->privileges = HV_PRIV_GUEST_DEFAULT;
    p->cpu_reserve = 0;
    p->cpu_cap = 100;
    p->cpu_weight = 100;
    h->parts[slot] = p;
    h->slots_used[slot / 64] |= 1ull << (slot % 64);
    id_insert(h, p);
    return p;
}

/* Give every page of a partition back to its parent, zeroed, and free the partition. Used by
 * DeletePartition (after its decode step) and by host teardown. */
void hv_partition_destroy(struct hv_host *h, struct hv_partition *p)
{
    uint32_t parent = p->parent_slot;
    hv_ports_drop_partition(h, p->slot);
    hv_grants_drop_partition(h, p->slot);
    hv_dirty_log_free(h, p);
    for (uint32_t i = 0; i < HV_MAX_VPS; i++) {
        if (p->vps[i]) {
            hv_vp_free(p->vps[i]);
            p->vps[i] = NULL;
        }
    }
    if (p->gpa_leaf) {
        /* The leaves' entry counts add up to gpa_mapped: the walk ends at the last leaf. */
        for (uint64_t r = 0, seen = 0; seen < p->gpa_mapped && r < HV_MAX_GPA_PAGES / HV_LEAF_ENTRIES; r++) {
            if (!p->gpa_leaf[r])
                continue;
            seen += p->gpa_leaf_count[r];
            uint64_t *t = (uint64_t *)(void *)hv_spa_page(h, p->gpa_leaf[r]);
            for (uint32_t i = 0; i < HV_LEAF_ENTRIES; i++)
                if (t[i] & HV_PTE_PRESENT)
                    hv_page_set_owner(h, t[i] >> HV_PAGE_SHIFT, parent);
        }
    }
    for (uint64_t i = 0; i < p->pool_used.len; i++)
        hv_page_set_owner(h, p->pool_used.pfn[i], parent);
    for (uint64_t i = 0; i < p->pool_free.len; i++)
        hv_page_set_owner(h, p->pool_free.pfn[i], parent);
    hv_page_list_free(&p->pool_used);
    hv_page_list_free(&p->pool_free);
    directory_free(p->gpa_leaf, DIRECTORY_ENTRIES * sizeof(uint64_t));
    directory_free(p->gpa_leaf_count, DIRECTORY_ENTRIES * sizeof(uint16_t));
    id_remove(h, p);
    h->slots_used[p->slot / 64] &= ~(1ull << (p->slot % 64));
    h->parts[p->slot] = NULL;
    free(p);
}

struct hv_partition *hv_partition_by_id(struct hv_host *h, uint64_t id)
{
    for (uint32_t i = id_home(id); h->by_id[i]; i = (i + 1) & (HV_ID_TABLE_SIZE - 1))
        if (h->by_id[i]->id == id)
            return h->by_id[i];
    return NULL;
}

struct hv_partition *hv_call_target(struct hv_call *c, uint64_t id, bool allow_self)
{
    if (id == HV_PARTITION_ID_SELF || id == c->caller->id)
        return allow_self ? c->caller : NULL;
    struct hv_partition *p = hv_partition_by_id(c->h, id);
    if (!p || p->slot == c->caller->slot || p->parent_slot != c->caller->slot)
        return NULL;
    return p;
}

/* ---- hypercalls ------------------------------------------------------------------------------ */

uint16_t hv_call_create_partition(struct hv_call *c)
{
    struct hv_in_create_partition in;
    memcpy(&in, c->in, sizeof(in));
    /* hvsim implements no creation flags; reserved fields must be zero. */
    if (in.flags != 0 || in.rsvdz != 0 || in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (in.proximity_domain_info != 0)
        return HV_STATUS_INVALID_PROXIMITY_DOMAIN_INFO;
    if (c->caller->slot != 0)
        return HV_STATUS_PARTITION_TOO_DEEP;
    /* apply */
    struct hv_partition *p = hv_partition_alloc(c->h, c->caller->slot);
    if (!p)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    hv_store64(c->out, p->id);
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_initialize_partition(struct hv_call *c)
{
    struct hv_partition *p = hv_call_target(c, hv_load64(c->in), false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (p->state != HV_PARTITION_CREATED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    if (p->pool_free.len < HV_PARTITION_INIT_PAGES)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    if (!hv_page_list_reserve(&p->pool_used, HV_PARTITION_INIT_PAGES))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply */
    for (uint32_t i = 0; i < HV_PARTITION_INIT_PAGES; i++)
        hv_pool_take(c->h, p);
    p->state = HV_PARTITION_INITIALIZED;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_finalize_partition(struct hv_call *c)
{
    struct hv_partition *p = hv_call_target(c, hv_load64(c->in), false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (p->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    hv_partition_set_running(c->h, p, false); /* cannot fail */
    p->state = HV_PARTITION_FINALIZED;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_delete_partition(struct hv_call *c)
{
    struct hv_partition *p = hv_call_target(c, hv_load64(c->in), false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    /* An initialized partition may be running: it must be finalized first. */
    if (p->state == HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    hv_partition_destroy(c->h, p);
    return HV_STATUS_SUCCESS;
}

static uint16_t property_get(const struct hv_partition *p, uint32_t code, uint64_t *value)
{
    switch (code) {
    case HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS: *value = p->privileges; return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_SUSPEND: *value = !p->started; return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_CPU_RESERVE: *value = p->cpu_reserve; return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_CPU_CAP: *value = p->cpu_cap; return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_CPU_WEIGHT: *value = p->cpu_weight; return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_GPA_PAGE_ACCESS_TRACKING: *value = hv_dirty_tracking(p); return HV_STATUS_SUCCESS;
    default: return HV_STATUS_UNKNOWN_PROPERTY;
    }
}

uint16_t hv_call_get_partition_property(struct hv_call *c)
{
    struct hv_in_get_partition_property in;
    memcpy(&in, c->in, sizeof(in));
    if (in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_partition *p = hv_call_target(c, in.partition_id, true);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    uint64_t v = 0;
    uint16_t st = property_get(p, in.property_code, &v);
    if (st == HV_STATUS_SUCCESS)
        hv_store64(c->out, v);
    return st;
}

uint16_t hv_call_set_partition_property(struct hv_call *c)
{
    struct hv_in_set_partition_property in;
    memcpy(&in, c->in, sizeof(in));
    if (in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_partition *p = hv_call_target(c, in.partition_id, false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    uint64_t v = in.property_value;
    switch (in.property_code) {
    case HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS:
        if (p->state != HV_PARTITION_CREATED)
            return HV_STATUS_INVALID_PARTITION_STATE;
        /* A child never holds a root-only privilege nor one its parent lacks. */
        if ((v & HV_PRIV_ROOT_ONLY) || (v & ~c->caller->privileges))
            return HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE;
        p->privileges = v;
        return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_SUSPEND:
        if (v > 1)
            return HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE;
        if (v == 0 && p->state != HV_PARTITION_INITIALIZED)
            return HV_STATUS_INVALID_PARTITION_STATE;
        /* Resuming is admission-controlled: a reserve that cannot be met fails (nothing changes). */
        return hv_partition_set_running(c->h, p, v == 0);
    case HV_PARTITION_PROPERTY_CPU_RESERVE: {
        if (v > 100)
            return HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE;
        uint32_t old = p->cpu_reserve;
        p->cpu_reserve = (uint32_t)v;
        if (p->started && c->h->sched->admit(c->h, p) != HV_STATUS_SUCCESS) {
            p->cpu_reserve = old;
            return HV_STATUS_NO_RESOURCES;
        }
        hv_sched_controls_changed(c->h); /* its runnable VPs may change class */
        return HV_STATUS_SUCCESS;
    }
    case HV_PARTITION_PROPERTY_CPU_CAP:
        if (v < 1 || v > 100)
            return HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE;
        p->cpu_cap = (uint32_t)v;
        hv_sched_controls_changed(c->h);
        return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_CPU_WEIGHT:
        if (v < 1 || v > 10000)
            return HV_STATUS_PROPERTY_VALUE_OUT_OF_RANGE;
        p->cpu_weight = (uint32_t)v;
        return HV_STATUS_SUCCESS;
    case HV_PARTITION_PROPERTY_GPA_PAGE_ACCESS_TRACKING:
        return hv_dirty_set_tracking(c->h, p, v); /* the child's dirty log (dirty.c) */
    default:
        return HV_STATUS_UNKNOWN_PROPERTY;
    }
}

uint16_t hv_call_get_partition_id(struct hv_call *c)
{
    hv_store64(c->out, c->caller->id);
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_get_next_child_partition(struct hv_call *c)
{
    struct hv_in_get_next_child_partition in;
    memcpy(&in, c->in, sizeof(in));
    if (in.parent_id != HV_PARTITION_ID_SELF && in.parent_id != c->caller->id)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (in.previous_child_id != HV_PARTITION_ID_INVALID && !hv_call_target(c, in.previous_child_id, false))
        return HV_STATUS_INVALID_PARTITION_ID;
    /* Children in ascending id order; 0 (HV_PARTITION_ID_INVALID) after the last. */
    uint64_t next = HV_PARTITION_ID_INVALID;
    for (uint32_t s = 1; s < HV_MAX_PARTITIONS; s++) {
        struct hv_partition *p = c->h->parts[s];
        if (p && p->parent_slot == c->caller->slot && p->id > in.previous_child_id &&
            (next == HV_PARTITION_ID_INVALID || p->id < next))
            next = p->id;
    }
    hv_store64(c->out, next);
    return HV_STATUS_SUCCESS;
}
