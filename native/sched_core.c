/* sched_core.c: the Hyper-V "core" scheduler (the default since Windows Server 2019): the classic
 * fair share, with one more rule: the SMT siblings of a core never run VPs of two different
 * partitions at the same time, so a VP never shares a core's caches and buffers with another VM.
 *
 * Invariant (checked by the tests): at every instant, for every core, all LPs of the core that
 * run a VP run VPs of one partition. An LP whose siblings run partition A stays idle rather than
 * run partition B.
 */
#include "core.h"

static struct hv_vp *core_pick(struct hv_host *h, struct hv_lp *lp)
{
    uint32_t smt = h->cfg.smt, first = lp->core * smt;
    struct hv_vp *sibling = NULL;
    for (uint32_t i = first; i < first + smt && !sibling; i++)
        if (i != lp->index && h->lps[i].vp)
            sibling = h->lps[i].vp;
    if (!sibling)
        return hv_sched_pick_fair(h, UINT32_MAX);
    /* The core belongs to the sibling's VM: only its VPs may join. If another VM deserves the
     * CPU more, stay idle instead, so the core drains and changes hands when its siblings'
     * slices end (otherwise one VM could keep a core for ever). */
    struct hv_vp *own = hv_sched_pick_fair(h, sibling->part_slot);
    struct hv_vp *any = hv_sched_pick_fair(h, UINT32_MAX);
    if (own && any && any->part_slot != own->part_slot && hv_sched_fairer(h, any, own))
        return NULL;
    return own;
}

const struct hv_sched_ops hv_sched_core = {
    .name = "core",
    .admit = hv_sched_fair_admit,
    .pick = core_pick,
    .budget = hv_sched_fair_budget,
    .charge = hv_sched_fair_charge,
    .window = hv_sched_fair_window,
    .rejoin = hv_sched_fair_rejoin,
};
