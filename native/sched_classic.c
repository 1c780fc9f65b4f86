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
 *
 * The order is a total order on runnable VPs, so a pick has one answer however it is found. It is
 * found in O(log n): the run queue is kept as three heaps (host->rq_heap) on (vruntime, slot,
 * index), one per class (under reserve, the rest, capped), and the pick is the top of the first
 * non-empty one of the first two. A runnable VP's key never changes (only a running VP is charged;
 * a waking VP rejoins before it is queued); its class changes only at a new window or a change of
 * its partition's reserve or cap, and both mark the heaps stale: the next pick sorts them again,
 * O(n) per window instead of per pick. host->sched_check keeps the old linear scan as a check.
 */
#include <stdlib.h>

#include "core.h"

uint64_t hv_sched_cap_ns(const struct hv_host *h, const struct hv_vp *vp)
{
    return h->costs.window_ns * h->parts[vp->part_slot]->cpu_cap / 100;
}

uint64_t hv_sched_reserve_ns(const struct hv_host *h, const struct hv_vp *vp)
{
    return h->costs.window_ns * h->parts[vp->part_slot]->cpu_reserve / 100;
}

/* Run time in the current window. A new window does not visit every VP: it starts a new epoch,
 * and a VP's count from an older epoch reads as 0 (hv_sched_fair_charge restarts it). */
uint64_t hv_sched_window_used(const struct hv_host *h, const struct hv_vp *vp)
{
    return vp->window_epoch == h->window_epoch ? vp->window_used_ns : 0;
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
        if (q && q != p && q->started && q->cpu_reserve)
            reserved += (uint64_t)q->cpu_reserve * vp_count(q);
    }
    return reserved <= 100ull * h->cfg.logical_processors ? HV_STATUS_SUCCESS : HV_STATUS_NO_RESOURCES;
}

/* Does a come before b in the fair-share order: under its reserve first, then least vruntime?
 * (Ties are not decided here.) */
bool hv_sched_fairer(const struct hv_host *h, const struct hv_vp *a, const struct hv_vp *b)
{
    bool ra = hv_sched_window_used(h, a) < hv_sched_reserve_ns(h, a);
    bool rb = hv_sched_window_used(h, b) < hv_sched_reserve_ns(h, b);
    if (ra != rb)
        return ra;
    return a->vruntime < b->vruntime;
}

/* Is a strictly better than b? The fair-share order, then (partition slot, VP index). */
static bool better(const struct hv_host *h, const struct hv_vp *a, const struct hv_vp *b)
{
    /* hv_sched_fairer's order, spelled out so each reserve is computed once (this is the
     * scheduler's inner loop). */
    bool ra = hv_sched_window_used(h, a) < hv_sched_reserve_ns(h, a);
    bool rb = hv_sched_window_used(h, b) < hv_sched_reserve_ns(h, b);
    if (ra != rb)
        return ra;
    if (a->vruntime != b->vruntime)
        return a->vruntime < b->vruntime;
    if (a->part_slot != b->part_slot)
        return a->part_slot < b->part_slot;
    return a->index < b->index;
}

/* The class of a runnable VP: what the pick asks first (capped, then under reserve). */
static uint32_t rq_class_of(const struct hv_host *h, const struct hv_vp *vp)
{
    uint64_t used = hv_sched_window_used(h, vp);
    if (used >= hv_sched_cap_ns(h, vp))
        return HV_RQ_CAPPED;
    return used < hv_sched_reserve_ns(h, vp) ? HV_RQ_RESERVE : HV_RQ_FAIR;
}

/* Heap order within a class: least vruntime, then (partition slot, VP index); from the keys the
 * entries hold, so a sift touches the heap's array only. */
static bool key_before(const struct hv_rq_entry *a, const struct hv_rq_entry *b)
{
    __extension__ typedef unsigned __int128 key; /* one comparison, no branch on the first half */
    return ((key)a->vruntime << 64 | a->tie) < ((key)b->vruntime << 64 | b->tie);
}

static void heap_set(struct hv_rq_entry *heap, uint32_t i, const struct hv_rq_entry *e)
{
    heap[i] = *e;
    e->vp->rq_hpos = i;
}

static void heap_fix(struct hv_host *h, uint32_t c, uint32_t i)
{
    struct hv_rq_entry *heap = h->rq_heap[c];
    uint32_t n = h->nr_rq_heap[c];
    struct hv_rq_entry e = heap[i];
    while (i > 0 && key_before(&e, &heap[(i - 1) / 2])) {
        heap_set(heap, i, &heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= n)
            break;
        if (r < n && key_before(&heap[r], &heap[l]))
            m = r;
        if (!key_before(&heap[m], &e))
            break;
        heap_set(heap, i, &heap[m]);
        i = m;
    }
    heap_set(heap, i, &e);
}

static void heap_push(struct hv_host *h, struct hv_vp *vp)
{
    uint32_t c = rq_class_of(h, vp);
    if (h->nr_rq_heap[c] == h->cap_rq_heap[c]) {
        uint32_t cap = h->cap_rq_heap[c] ? h->cap_rq_heap[c] * 2 : 64;
        struct hv_rq_entry *n = realloc(h->rq_heap[c], cap * sizeof(*n));
        if (!n)
            abort(); /* as the event queue: a lost runnable VP would silently break determinism */
        h->rq_heap[c] = n;
        h->cap_rq_heap[c] = cap;
    }
    vp->rq_class = c;
    struct hv_rq_entry e = { vp->vruntime, (uint64_t)vp->part_slot << 32 | vp->index, vp };
    heap_set(h->rq_heap[c], h->nr_rq_heap[c]++, &e);
    heap_fix(h, c, vp->rq_hpos);
}

void hv_sched_rq_insert(struct hv_host *h, struct hv_vp *vp)
{
    if (!h->rq_stale)
        heap_push(h, vp); /* stale heaps are rebuilt from host->rq at the next pick */
}

void hv_sched_rq_erase(struct hv_host *h, struct hv_vp *vp)
{
    if (h->rq_stale)
        return;
    uint32_t c = vp->rq_class, i = vp->rq_hpos;
    struct hv_rq_entry *last = &h->rq_heap[c][--h->nr_rq_heap[c]];
    if (last->vp == vp)
        return;
    heap_set(h->rq_heap[c], i, last);
    heap_fix(h, c, i);
}

void hv_sched_controls_changed(struct hv_host *h)
{
    h->rq_stale = true;
}

void hv_sched_rq_fini(struct hv_host *h)
{
    for (uint32_t c = 0; c < 3; c++)
        free(h->rq_heap[c]);
}

/* Sort host->rq into the heaps again, each VP under its current class. */
static void rq_rebuild(struct hv_host *h)
{
    for (uint32_t c = 0; c < 3; c++)
        h->nr_rq_heap[c] = 0;
    h->rq_stale = false;
    for (uint32_t i = 0; i < h->nr_rq; i++)
        heap_push(h, h->rq[i]);
}

/* The old pick, a scan of every runnable VP: the definition the heaps must agree with. */
static struct hv_vp *pick_scan(struct hv_host *h, uint32_t only_slot)
{
    struct hv_vp *best = NULL;
    for (uint32_t i = 0; i < h->nr_rq; i++) {
        struct hv_vp *vp = h->rq[i];
        if (only_slot != UINT32_MAX && vp->part_slot != only_slot)
            continue;
        if (hv_sched_window_used(h, vp) >= hv_sched_cap_ns(h, vp))
            continue; /* capped until the next window */
        if (!best || better(h, vp, best))
            best = vp;
    }
    return best;
}

/* The best runnable VP, of partition `only_slot` (UINT32_MAX: of any partition). */
struct hv_vp *hv_sched_pick_fair(struct hv_host *h, uint32_t only_slot)
{
    struct hv_vp *best = NULL;
    if (only_slot == UINT32_MAX) {
        if (h->rq_stale)
            rq_rebuild(h);
        if (h->nr_rq_heap[HV_RQ_RESERVE])
            best = h->rq_heap[HV_RQ_RESERVE][0].vp;
        else if (h->nr_rq_heap[HV_RQ_FAIR])
            best = h->rq_heap[HV_RQ_FAIR][0].vp;
    } else {
        /* One partition's VPs: at most HV_MAX_VPS to look at, however long the queue. */
        const struct hv_partition *p = h->parts[only_slot];
        for (uint32_t i = 0; p && i < HV_MAX_VPS; i++) {
            struct hv_vp *vp = p->vps[i];
            if (!vp || vp->rq_pos < 0 || hv_sched_window_used(h, vp) >= hv_sched_cap_ns(h, vp))
                continue;
            if (!best || better(h, vp, best))
                best = vp;
        }
    }
    if (h->sched_check) {
        h->sched_checked++;
        h->sched_mismatches += pick_scan(h, only_slot) != best;
    }
    return best;
}

uint64_t hv_sched_selfcheck(struct hv_host *h, int enable, uint64_t *checked)
{
    h->sched_check = enable != 0;
    *checked = h->sched_checked;
    return h->sched_mismatches;
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
    if (h->rq_stale)
        rq_rebuild(h);
    if (vp->rq_pos >= 0) {
        for (uint32_t i = 0; i < h->nr_rq; i++)
            if (h->rq[i] != vp && h->rq[i]->vruntime < floor)
                floor = h->rq[i]->vruntime;
    } else {
        /* Each heap's top has its least vruntime. */
        for (uint32_t c = 0; c < 3; c++)
            if (h->nr_rq_heap[c] && h->rq_heap[c][0].vruntime < floor)
                floor = h->rq_heap[c][0].vruntime;
    }
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
    uint64_t used = hv_sched_window_used(h, vp);
    uint64_t left = cap > used ? cap - used : 0;
    uint64_t slice = h->costs.time_slice_ns;
    /* A slice that crosses into the next window is split there by the window event, so only
     * this window's budget bounds it. */
    return left < slice ? left : slice;
}

void hv_sched_fair_charge(struct hv_host *h, struct hv_vp *vp, uint64_t ns)
{
    if (vp->window_epoch != h->window_epoch) {
        vp->window_epoch = h->window_epoch;
        vp->window_used_ns = 0;
    }
    vp->window_used_ns += ns;
    vp->vruntime += ns * 10000 / h->parts[vp->part_slot]->cpu_weight;
}

void hv_sched_fair_window(struct hv_host *h)
{
    h->window_epoch++;  /* every VP's window use reads 0 from now on */
    h->rq_stale = true; /* and so the runnable VPs' classes change */
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
