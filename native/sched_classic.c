/* sched_classic.c: the Hyper-V "classic" scheduler: fair share with Hyper-V's CPU controls, any
 * VP on any free LP.
 *
 * Policy, per VP of a partition (the partition's controls apply to each of its VPs):
 *  - reserve: VPs that have run less than reserve% of the accounting window in this window are
 *    picked before all others; admission control keeps the sum of reserves within the LPs, so
 *    reserves can always be met.
 *  - limit (cap): a VP never runs more than cap% of each accounting window; its slice is cut at
 *    the cap and it is not picked again until the next window.
 *  - weight: among the rest, the VP with the least weighted virtual run time goes next
 *    (vruntime advances by run time * 10000 / weight), so busy VPs share in proportion to weight.
 * Ties break on (partition slot, VP index), never on queue order, so picks are deterministic.
 * Invariants: a capped VP is never dispatched; a slice never runs past the VP's cap.
 */
#include "core.h"

uint64_t hv_sched_cap_ns(const struct hv_host *h, const struct hv_vp *vp)
{
    return h->costs.window_ns * h->parts[vp->part_slot]->cpu_cap / 100;
}

uint64_t hv_sched_reserve_ns(const struct hv_host *h, const struct hv_vp *vp)
{
    return h->costs.window_ns * h->parts[vp->part_slot]->cpu_reserve / 100;
}

static uint32_t vp_count(const struct hv_partition *p)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < HV_MAX_VPS; i++)
        n += p->vps[i] != NULL;
    return n;
}

static uint16_t classic_admit(struct hv_host *h, struct hv_partition *p)
{
    uint64_t reserved = (uint64_t)p->cpu_reserve * vp_count(p);
    for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++) {
        struct hv_partition *q = h->parts[s];
        if (q && q != p && q->started)
            reserved += (uint64_t)q->cpu_reserve * vp_count(q);
    }
    return reserved <= 100ull * h->cfg.logical_processors ? HV_STATUS_SUCCESS : HV_STATUS_NO_RESOURCES;
}

/* Does a come before b in the fair-share order: under its reserve first, then least vruntime?
 * (Ties are not decided here.) */
bool hv_sched_fairer(const struct hv_host *h, const struct hv_vp *a, const struct hv_vp *b)
{
    bool ra = a->window_used_ns < hv_sched_reserve_ns(h, a), rb = b->window_used_ns < hv_sched_reserve_ns(h, b);
    if (ra != rb)
        return ra;
    return a->vruntime < b->vruntime;
}

/* Is a strictly better than b? The fair-share order, then (partition slot, VP index). */
static bool better(const struct hv_host *h, const struct hv_vp *a, const struct hv_vp *b)
{
    /* hv_sched_fairer's order, spelled out so each reserve is computed once (this is the
     * scheduler's inner loop). */
    bool ra = a->window_used_ns < hv_sched_reserve_ns(h, a), rb = b->window_used_ns < hv_sched_reserve_ns(h, b);
    if (ra != rb)
        return ra;
    if (a->vruntime != b->vruntime)
        return a->vruntime < b->vruntime;
    if (a->part_slot != b->part_slot)
        return a->part_slot < b->part_slot;
    return a->index < b->index;
}

/* The best runnable VP, of partition `only_slot` (UINT32_MAX: of any partition). */
struct hv_vp *hv_sched_pick_fair(struct hv_host *h, uint32_t only_slot)
{
    struct hv_vp *best = NULL;
    for (uint32_t i = 0; i < h->nr_rq; i++) {
        struct hv_vp *vp = h->rq[i];
        if (only_slot != UINT32_MAX && vp->part_slot != only_slot)
            continue;
        if (vp->window_used_ns >= hv_sched_cap_ns(h, vp))
            continue; /* capped until the next window */
        if (!best || better(h, vp, best))
            best = vp;
    }
    return best;
}

static struct hv_vp *classic_pick(struct hv_host *h, struct hv_lp *lp)
{
    (void)lp;
    return hv_sched_pick_fair(h, UINT32_MAX);
}

/* A VP that slept keeps no credit from it: it rejoins no more than one default-weight slice
 * behind the least vruntime of the others, so a waker cannot starve the busy ones. */
void hv_sched_fair_rejoin(struct hv_host *h, struct hv_vp *vp)
{
    uint64_t floor = UINT64_MAX;
    for (uint32_t i = 0; i < h->nr_rq; i++)
        if (h->rq[i] != vp && h->rq[i]->vruntime < floor)
            floor = h->rq[i]->vruntime;
    for (uint32_t i = 0; i < h->cfg.logical_processors; i++)
        if (h->lps[i].vp && h->lps[i].vp != vp && h->lps[i].vp->vruntime < floor)
            floor = h->lps[i].vp->vruntime;
    uint64_t lag = h->costs.time_slice_ns * 100; /* a slice at weight 100, in vruntime units */
    if (floor != UINT64_MAX && floor > lag && vp->vruntime < floor - lag)
        vp->vruntime = floor - lag;
}

uint64_t hv_sched_fair_budget(struct hv_host *h, struct hv_vp *vp)
{
    uint64_t cap = hv_sched_cap_ns(h, vp);
    uint64_t left = cap > vp->window_used_ns ? cap - vp->window_used_ns : 0;
    uint64_t slice = h->costs.time_slice_ns;
    /* A slice that crosses into the next window is split there by the window event, so only
     * this window's budget bounds it. */
    return left < slice ? left : slice;
}

void hv_sched_fair_charge(struct hv_host *h, struct hv_vp *vp, uint64_t ns)
{
    vp->window_used_ns += ns;
    vp->vruntime += ns * 10000 / h->parts[vp->part_slot]->cpu_weight;
}

void hv_sched_fair_window(struct hv_host *h)
{
    for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++) {
        struct hv_partition *p = h->parts[s];
        if (!p)
            continue;
        for (uint32_t i = 0; i < HV_MAX_VPS; i++)
            if (p->vps[i])
                p->vps[i]->window_used_ns = 0;
    }
}

const struct hv_sched_ops hv_sched_classic = {
    .name = "classic",
    .admit = classic_admit,
    .pick = classic_pick,
    .budget = hv_sched_fair_budget,
    .charge = hv_sched_fair_charge,
    .window = hv_sched_fair_window,
    .rejoin = hv_sched_fair_rejoin,
};

uint16_t hv_sched_fair_admit(struct hv_host *h, struct hv_partition *p)
{
    return classic_admit(h, p);
}
