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
    for (uint32_t i = first; i < first + smt; i++)
        if (i != lp->index && h->lps[i].vp)
            return hv_sched_pick_fair(h, h->lps[i].vp->part_slot); /* siblings share one VM */
    return hv_sched_pick_fair(h, UINT32_MAX);
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
