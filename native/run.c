/* run.c: simulated time: the event queue, VPs on logical processors, and the run loop that
 * returns to Python only when Python guests must take their next steps.
 *
 * Time is integer nanoseconds; events are ordered by (time, sequence), so two runs of the same
 * configuration process the same events in the same order, and the trace digest (every event and
 * every dispatch folded in) proves it.
 *
 * A VP's life: STOPPED until its partition runs; then RUNNABLE (in host->rq) when it has CPU work,
 * RUNNING on an LP until its slice or its work ends, HALTED while it waits for an interrupt or a
 * timeout, GUEST while its Python coroutine decides what it does next. Work is `debt_ns` (costs
 * charged to it: hypercalls, interrupts) spent first, then `work_ns` (what its guest computes).
 * A VP's wake and slice events carry a guard from one host-wide sequence (like the synthetic
 * timers'): a partition deleted with such events queued cannot reach a VP created later in its
 * slot, whose own guards are all newer.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

/* ---- trace --------------------------------------------------------------------------------- */
static void trace4(struct hv_host *h, uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    hv_digest_u64(&h->trace, h->now);
    hv_digest_u64(&h->trace, a);
    hv_digest_u64(&h->trace, b);
    hv_digest_u64(&h->trace, c);
    hv_digest_u64(&h->trace, d);
}

/* ---- the event queue: a 4-ary min-heap on (time, seq) -------------------------------------------
 * Four children per node: half the levels of a binary heap, so a pop moves half as many 48-byte
 * events (the loop's main cost with hundreds of timers queued). (time, seq) is a total order, so
 * the events come out in the same order whatever the heap's shape. */
#define EV_ARITY 4u
static bool ev_before(const struct hv_event *a, const struct hv_event *b)
{
    /* (time, seq) as one 128-bit number: one comparison the compiler need not branch on. */
    __extension__ typedef unsigned __int128 key;
    return ((key)a->time << 64 | a->seq) < ((key)b->time << 64 | b->seq);
}

void hv_event_push(struct hv_host *h, uint64_t time, uint32_t kind, uint32_t slot, uint32_t vp,
                   uint64_t arg, uint64_t arg2)
{
    if (h->nr_events == h->cap_events) {
        uint32_t cap = h->cap_events ? h->cap_events * 2 : 256;
        struct hv_event *n = realloc(h->events, cap * sizeof(*n));
        if (!n)
            abort(); /* N.B. losing an event would silently break determinism; stop instead */
        h->events = n;
        h->cap_events = cap;
    }
    struct hv_event e = { time, h->seq++, kind, slot, vp, arg, arg2 };
    uint32_t i = h->nr_events++;
    while (i > 0) {
        uint32_t parent = (i - 1) / EV_ARITY;
        if (!ev_before(&e, &h->events[parent]))
            break;
        h->events[i] = h->events[parent];
        i = parent;
    }
    h->events[i] = e;
}

static struct hv_event ev_pop(struct hv_host *h)
{
    struct hv_event top = h->events[0];
    struct hv_event last = h->events[--h->nr_events];
    uint32_t i = 0, n = h->nr_events;
    for (;;) {
        uint32_t first = EV_ARITY * i + 1, end = first + EV_ARITY < n ? first + EV_ARITY : n, m = i;
        const struct hv_event *best = &last;
        for (uint32_t c = first; c < end; c++)
            if (ev_before(&h->events[c], best)) { m = c; best = &h->events[c]; }
        if (m == i)
            break;
        h->events[i] = h->events[m];
        i = m;
    }
    if (n)
        h->events[i] = last;
    return top;
}

/* ---- VPs --------------------------------------------------------------------------------------- */
struct hv_vp *hv_vp_lookup(struct hv_host *h, uint32_t slot, uint32_t vp_index)
{
    if (slot >= HV_MAX_PARTITIONS || vp_index >= HV_MAX_VPS || !h->parts[slot])
        return NULL;
    return h->parts[slot]->vps[vp_index];
}

static void rq_add(struct hv_host *h, struct hv_vp *vp)
{
    if (vp->rq_pos >= 0)
        return;
    if (h->nr_rq == h->cap_rq) {
        uint32_t cap = h->cap_rq ? h->cap_rq * 2 : 64;
        struct hv_vp **n = realloc(h->rq, cap * sizeof(*n));
        if (!n)
            abort();
        h->rq = n;
        h->cap_rq = cap;
    }
    vp->rq_pos = (int32_t)h->nr_rq;
    h->rq[h->nr_rq++] = vp;
    hv_sched_rq_insert(h, vp);
}

static void rq_remove(struct hv_host *h, struct hv_vp *vp)
{
    if (vp->rq_pos < 0)
        return;
    hv_sched_rq_erase(h, vp);
    struct hv_vp *last = h->rq[--h->nr_rq];
    h->rq[vp->rq_pos] = last;
    last->rq_pos = vp->rq_pos;
    vp->rq_pos = -1;
}

static void resume_add(struct hv_host *h, struct hv_vp *vp, uint32_t reason)
{
    vp->exec = HV_VP_GUEST;
    vp->resume_reason = reason;
    if (vp->in_resume_list)
        return;
    if (h->nr_resume == h->cap_resume) {
        uint32_t cap = h->cap_resume ? h->cap_resume * 2 : 64;
        struct hv_vp **n = realloc(h->resume, cap * sizeof(*n));
        if (!n)
            abort();
        h->resume = n;
        h->cap_resume = cap;
    }
    vp->in_resume_list = true;
    h->resume[h->nr_resume++] = vp;
}

static void resume_remove(struct hv_host *h, struct hv_vp *vp)
{
    if (!vp->in_resume_list)
        return;
    for (uint32_t i = 0; i < h->nr_resume; i++)
        if (h->resume[i] == vp) {
            memmove(&h->resume[i], &h->resume[i + 1], (h->nr_resume - i - 1) * sizeof(vp));
            h->nr_resume--;
            break;
        }
    vp->in_resume_list = false;
}

static void make_runnable(struct hv_host *h, struct hv_vp *vp)
{
    vp->exec = HV_VP_RUNNABLE;
    rq_add(h, vp);
}

void hv_vp_charge(struct hv_host *h, struct hv_vp *vp, uint64_t ns)
{
    (void)h;
    vp->debt_ns += ns;
}

static void halt(struct hv_host *h, struct hv_vp *vp, uint64_t timeout, bool sleeping);

/* A halted VP wakes: it spends its debt (and a tick guest its tick work), then its guest goes on. */
static void wake(struct hv_host *h, struct hv_vp *vp, uint32_t reason)
{
    if (__builtin_expect(vp->stall_ns != 0, 0) && vp->guest_kind != HV_GUEST_PYTHON) {
        /* A built-in guest takes no steps (vp_step stalls a Python guest's): the pages fetched for
         * it (its SynIC pages, post-copy) hold its wake-up back instead; on_wake wakes it after. */
        trace4(h, 0x6000, vp->part_slot, vp->index, vp->stall_ns);
        vp->stalled = true;
        vp->stalled_op = 0;
        vp->resume_reason = reason;
        halt(h, vp, vp->stall_ns, true);
        vp->stall_ns = 0;
        return;
    }
    vp->wake_seq = ++h->vp_guard_seq; /* any pending timeout is now stale */
    vp->sleeping = false;
    vp->resume_reason = reason;
    if (vp->guest_kind == HV_GUEST_TICK)
        vp->work_ns += vp->tick_work_ns;
    h->sched->rejoin(h, vp);
    make_runnable(h, vp);
}

static void interrupt_compute(struct hv_host *h, struct hv_vp *vp);

void hv_vp_raise_interrupt(struct hv_host *h, struct hv_vp *vp, uint32_t sint)
{
    struct hv_partition *p = h->parts[vp->part_slot];
    vp->pending_sints |= 1u << sint;
    hv_vp_charge(h, vp, h->costs.interrupt_ns);
    trace4(h, 0x1000 + sint, vp->part_slot, vp->index, 0);
    if (!p || !p->started)
        return;
    if (vp->exec == HV_VP_HALTED && !vp->sleeping)
        wake(h, vp, HV_RESUME_INTERRUPT);
    else if (vp->interruptible && (vp->exec == HV_VP_RUNNING || vp->exec == HV_VP_RUNNABLE))
        interrupt_compute(h, vp);
}

int hv_vp_device_interrupt(struct hv_host *h, uint64_t partition_id, uint32_t vp_index)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    struct hv_vp *vp = p && vp_index < HV_MAX_VPS ? p->vps[vp_index] : NULL;
    if (!vp)
        return -1;
    hv_vp_charge(h, vp, h->costs.interrupt_ns);
    trace4(h, 0x1010, vp->part_slot, vp->index, 0);
    if (!p->started)
        return 0;
    if (vp->exec == HV_VP_HALTED && !vp->sleeping)
        wake(h, vp, HV_RESUME_INTERRUPT);
    else if (vp->interruptible && (vp->exec == HV_VP_RUNNING || vp->exec == HV_VP_RUNNABLE))
        interrupt_compute(h, vp);
    return 0;
}

static void halt(struct hv_host *h, struct hv_vp *vp, uint64_t timeout, bool sleeping)
{
    vp->exec = HV_VP_HALTED;
    vp->sleeping = sleeping;
    vp->wake_seq = ++h->vp_guard_seq;
    if (timeout) {
        vp->wake_at = h->now + timeout;
        hv_event_push(h, vp->wake_at, HV_EV_WAKE, vp->part_slot, vp->index, 0, vp->wake_seq);
    } else {
        vp->wake_at = 0;
    }
}

/* The VP's work is done: its guest takes its next step. */
static void step_done(struct hv_host *h, struct hv_vp *vp)
{
    struct hv_partition *p = h->parts[vp->part_slot];
    switch (vp->guest_kind) {
    case HV_GUEST_PYTHON:
        vp->interruptible = false;
        resume_add(h, vp, vp->resume_reason ? vp->resume_reason : HV_RESUME_STEP);
        return;
    case HV_GUEST_TICK: {
        /* What the tick guest's interrupt handler does: acknowledge, then idle again. The
         * acknowledgement may deliver a queued message and raise the SINT anew: then it has
         * another interrupt to handle before it halts. */
        uint32_t sints = vp->pending_sints;
        vp->pending_sints = 0;
        if (sints)
            hv_synic_consume(h, p, vp, sints);
        if (vp->pending_sints) {
            vp->work_ns += vp->tick_work_ns;
            make_runnable(h, vp);
        } else {
            halt(h, vp, 0, false);
        }
        return;
    }
    default:
        vp->pending_sints = 0;
        halt(h, vp, 0, false);
        return;
    }
}

/* ---- LPs -------------------------------------------------------------------------------------- */

/* Charge a running VP for the time since it was dispatched (or last accounted). */
static void account(struct hv_host *h, struct hv_vp *vp)
{
    uint64_t ran = h->now - vp->dispatched_at;
    vp->dispatched_at = h->now;
    if (!ran)
        return;
    uint64_t d = ran < vp->debt_ns ? ran : vp->debt_ns;
    vp->debt_ns -= d;
    if (vp->work_ns != HV_WORK_FOREVER)
        vp->work_ns -= (ran - d) < vp->work_ns ? (ran - d) : vp->work_ns;
    vp->run_time_ns += ran;
    h->parts[vp->part_slot]->run_time_ns += ran;
    h->lps[vp->lp].busy_ns += ran;
    h->sched->charge(h, vp, ran);
}

static void sched_record(struct hv_host *h, const struct hv_vp *vp, uint32_t lp, uint32_t kind)
{
    if (!h->cap_sched_log)
        return;
    if (h->nr_sched_log == h->cap_sched_log) {
        h->sched_log_dropped++;
        return;
    }
    struct hv_sched_record *r = &h->sched_log[h->nr_sched_log++];
    r->time_ns = h->now;
    r->partition_id = h->parts[vp->part_slot]->id;
    r->lp = lp;
    r->vp_index = vp->index;
    r->kind = kind;
    r->pad = 0;
}

int hv_sched_log_enable(struct hv_host *h, uint32_t capacity)
{
    free(h->sched_log);
    h->sched_log = NULL;
    h->nr_sched_log = h->cap_sched_log = 0;
    if (!capacity)
        return 0;
    h->sched_log = calloc(capacity, sizeof(*h->sched_log));
    if (!h->sched_log)
        return -1;
    h->cap_sched_log = capacity;
    /* VPs already on an LP open their slice now, so every "off" has its "on". */
    for (uint32_t i = 0; i < h->cfg.logical_processors; i++)
        if (h->lps[i].vp)
            sched_record(h, h->lps[i].vp, i, 1);
    return 0;
}

uint32_t hv_sched_log_take(struct hv_host *h, struct hv_sched_record *out, uint32_t max, uint64_t *dropped)
{
    uint32_t n = h->nr_sched_log < max ? h->nr_sched_log : max;
    memcpy(out, h->sched_log, n * sizeof(*out));
    memmove(h->sched_log, h->sched_log + n, (h->nr_sched_log - n) * sizeof(*out));
    h->nr_sched_log -= n;
    *dropped = h->sched_log_dropped;
    return n;
}

static void dispatch(struct hv_host *h, struct hv_lp *lp, struct hv_vp *vp)
{
    rq_remove(h, vp);
    vp->exec = HV_VP_RUNNING;
    vp->lp = (int32_t)lp->index;
    lp->vp = vp;
    vp->dispatched_at = h->now;
    uint64_t want = vp->work_ns == HV_WORK_FOREVER ? HV_WORK_FOREVER : vp->work_ns + vp->debt_ns;
    uint64_t budget = h->sched->budget(h, vp);
    uint64_t run_for = want < budget ? want : budget;
    vp->slice_end = h->now + run_for;
    vp->slice_seq = ++h->vp_guard_seq;
    hv_event_push(h, vp->slice_end, HV_EV_SLICE, vp->part_slot, vp->index, 0, vp->slice_seq);
    trace4(h, 0x2000 + lp->index, vp->part_slot, vp->index, run_for);
    sched_record(h, vp, lp->index, 1);
}

static void undispatch(struct hv_host *h, struct hv_vp *vp)
{
    sched_record(h, vp, (uint32_t)vp->lp, 2);
    h->lps[vp->lp].vp = NULL;
    vp->lp = -1;
}

static void schedule_idle(struct hv_host *h)
{
    if (!h->nr_rq)
        return;
    for (uint32_t i = 0; i < h->cfg.logical_processors && h->nr_rq; i++) {
        struct hv_lp *lp = &h->lps[i];
        if (lp->vp)
            continue;
        struct hv_vp *vp = h->sched->pick(h, lp);
        if (vp)
            dispatch(h, lp, vp);
    }
}

/* An interrupt ends a Python guest's HV_STEP_COMPUTE_INTR early: the VP leaves its LP (or the run
 * queue) at once and its guest resumes with the work it had left; the interrupt's cost stays in
 * its debt, spent with its next work. */
static void interrupt_compute(struct hv_host *h, struct hv_vp *vp)
{
    if (vp->exec == HV_VP_RUNNING) {
        account(h, vp);
        undispatch(h, vp);
        vp->slice_seq = ++h->vp_guard_seq; /* its slice event is stale now */
    } else {
        rq_remove(h, vp);
    }
    vp->interruptible = false;
    vp->work_left_ns = vp->work_ns;
    vp->work_ns = 0;
    trace4(h, 0x5000, vp->part_slot, vp->index, vp->work_left_ns);
    resume_add(h, vp, HV_RESUME_INTERRUPT);
}

/* ---- events ------------------------------------------------------------------------------------ */
static void on_slice(struct hv_host *h, const struct hv_event *e)
{
    struct hv_vp *vp = hv_vp_lookup(h, e->slot, e->vp);
    if (!vp || vp->exec != HV_VP_RUNNING || vp->slice_seq != e->arg2)
        return; /* stale: the VP was stopped or redispatched since */
    account(h, vp);
    undispatch(h, vp);
    if (vp->debt_ns || vp->work_ns)
        make_runnable(h, vp);
    else
        step_done(h, vp);
}

static int vp_step(struct hv_host *h, struct hv_vp *vp, uint32_t op, uint64_t arg);

static void on_wake(struct hv_host *h, const struct hv_event *e)
{
    struct hv_vp *vp = hv_vp_lookup(h, e->slot, e->vp);
    if (!vp || vp->exec != HV_VP_HALTED || vp->wake_seq != e->arg2)
        return;
    if (vp->stalled && vp->stalled_op == 0) {
        vp->stalled = false; /* a tick guest's stall is over: it wakes as it would have */
        wake(h, vp, vp->resume_reason);
        return;
    }
    if (vp->stalled) {
        /* Its stall is over: the step its guest took when the stall began goes in now. */
        vp->stalled = false;
        vp->sleeping = false;
        vp->exec = HV_VP_GUEST;
        h->sched->rejoin(h, vp);
        vp_step(h, vp, vp->stalled_op, vp->stalled_arg);
        return;
    }
    wake(h, vp, HV_RESUME_TIMEOUT);
}

static void on_window(struct hv_host *h)
{
    /* Split the running VPs' time at the boundary, so each window is charged exactly. */
    for (uint32_t i = 0; i < h->cfg.logical_processors; i++)
        if (h->lps[i].vp)
            account(h, h->lps[i].vp);
    h->window_start = h->now;
    h->sched->window(h);
    /* A VP whose slice was cut by its cap gets a new budget from the next pick. */
    hv_event_push(h, h->now + h->costs.window_ns, HV_EV_WINDOW, 0, 0, 0, 0);
}

static void process(struct hv_host *h, const struct hv_event *e)
{
    trace4(h, e->kind, e->slot, e->vp, e->arg);
    h->events_processed++;
    switch (e->kind) {
    case HV_EV_SLICE: on_slice(h, e); break;
    case HV_EV_WAKE: on_wake(h, e); break;
    case HV_EV_WINDOW: on_window(h); break;
    case HV_EV_STIMER: {
        /* A suspended partition's timers still expire: the message waits for its VP. */
        struct hv_vp *vp = hv_vp_lookup(h, e->slot, e->vp);
        if (vp)
            hv_synic_timer_expired(h, h->parts[e->slot], vp, (uint32_t)e->arg, e->arg2);
        break;
    }
    default: break;
    }
}

/* ---- starting and stopping partitions ------------------------------------------------------------ */

static void vp_start(struct hv_host *h, struct hv_vp *vp)
{
    vp->pending_sints = 0;
    switch (vp->guest_kind) {
    case HV_GUEST_PYTHON: resume_add(h, vp, HV_RESUME_START); break;
    case HV_GUEST_BURN:
        vp->work_ns = HV_WORK_FOREVER;
        h->sched->rejoin(h, vp);
        make_runnable(h, vp);
        break;
    default: halt(h, vp, 0, false); break;
    }
}

static void vp_stop(struct hv_host *h, struct hv_vp *vp)
{
    if (vp->exec == HV_VP_RUNNING) {
        account(h, vp);
        undispatch(h, vp);
    }
    rq_remove(h, vp);
    resume_remove(h, vp);
    vp->exec = HV_VP_STOPPED;
    vp->cycle.armed = 0;  /* its guest resumes (HV_RESUME_START) and goes on from the cycle's state */
    /* An interruptible computation cut by the stop is reported as such when the VP starts again. */
    vp->work_left_ns = vp->interruptible ? vp->work_ns : 0;
    vp->interruptible = false;
    vp->slice_seq = ++h->vp_guard_seq;
    vp->wake_seq = ++h->vp_guard_seq;
    vp->work_ns = vp->debt_ns = 0;
    vp->stalled = false;  /* (a stall cut by the stop is over: its guest starts afresh) */
    vp->stall_ns = 0;
}

uint16_t hv_partition_set_running(struct hv_host *h, struct hv_partition *p, bool run)
{
    if (run == p->started)
        return HV_STATUS_SUCCESS;
    if (run) {
        uint16_t st = h->sched->admit(h, p);
        if (st != HV_STATUS_SUCCESS)
            return st;
        p->started = true;
        for (uint32_t i = 0; i < HV_MAX_VPS; i++)
            if (p->vps[i])
                vp_start(h, p->vps[i]);
    } else {
        for (uint32_t i = 0; i < HV_MAX_VPS; i++)
            if (p->vps[i])
                vp_stop(h, p->vps[i]);
        p->started = false;
    }
    trace4(h, 0x3000 + run, p->slot, 0, 0);
    return HV_STATUS_SUCCESS;
}

/* ---- duty cycles ------------------------------------------------------------------------------------ */

/* Whether a resumed VP's step was its cycle's and ended where its guest would only take the cycle's
 * next step: the step ran to its end (a computation done, an idle timed out), no interrupt came,
 * and a kernel cycle's guest has nothing of its own to do (no timer due, not dirty). */
static bool cycle_ready(const struct hv_host *h, const struct hv_vp *vp)
{
    const struct hv_cycle *c = &vp->cycle;
    if (!c->armed || vp->pending_sints || vp->work_left_ns)
        return false;
    if (vp->resume_reason != (c->phase == HV_CYCLE_COMPUTE ? HV_RESUME_STEP : HV_RESUME_TIMEOUT))
        return false;
    return c->kind != HV_CYCLE_KERNEL || (!c->dirty && (!c->horizon || c->horizon > h->now));
}

/* Take the cycle's next step for its guest, as the guest's loop would (partitions/kernel.py,
 * KernelContext.cycle and SecondaryContext.cycle): a kernel cycle computes interruptibly, at most
 * up to its next timer, and idles in halts that end at the period's deadline or that timer; a
 * plain one computes its busy time and sleeps its idle time. */
static struct hv_held_step cycle_decide(struct hv_host *h, struct hv_vp *vp)
{
    struct hv_cycle *c = &vp->cycle;
    bool kernel = c->kind == HV_CYCLE_KERNEL;
    uint64_t nxt = kernel && c->horizon ? c->horizon - h->now : UINT64_MAX; /* > 0: cycle_ready */
    bool compute;
    if (c->phase == HV_CYCLE_COMPUTE) {
        c->left_ns -= c->step_ns;
        if (!c->left_ns) { /* the period's work is done: its idle, or (none) the next period */
            if (c->idle_ns)
                c->deadline = h->now + c->idle_ns;
            else
                c->left_ns = c->busy_ns;
        }
        compute = c->left_ns != 0;
    } else if (kernel && c->deadline > h->now) {
        compute = false; /* a halt ended by the timer horizon; the idle goes on */
    } else if (c->busy_ns) {
        c->left_ns = c->busy_ns;
        compute = true;
    } else {
        c->deadline = h->now + c->idle_ns;
        compute = false;
    }
    uint64_t arg;
    uint32_t op;
    if (compute) {
        c->phase = HV_CYCLE_COMPUTE;
        arg = kernel && nxt < c->left_ns ? nxt : c->left_ns;
        op = kernel ? HV_STEP_COMPUTE_INTR : HV_STEP_COMPUTE;
    } else {
        c->phase = HV_CYCLE_IDLE;
        arg = c->deadline - h->now;
        if (nxt < arg)
            arg = nxt;
        op = kernel ? HV_STEP_HALT : HV_STEP_SLEEP;
    }
    c->step_ns = arg;
    c->steps++;
    return (struct hv_held_step){h->parts[vp->part_slot]->id, vp->index, op, arg};
}

/* Hold a decided cycle step until the batch's Python steps are applied (struct hv_host: held). */
static void cycle_hold(struct hv_host *h, struct hv_held_step s)
{
    if (h->nr_held == h->cap_held) {
        uint32_t cap = h->cap_held ? h->cap_held * 2 : 64;
        struct hv_held_step *n = realloc(h->held, cap * sizeof(*n));
        if (!n)
            abort();
        h->held = n;
        h->cap_held = cap;
    }
    h->held[h->nr_held++] = s;
}

/* Apply the held cycle steps in batch order. A VP whose guest was replaced or stopped meanwhile
 * (its cycle disarmed), or whose partition went, takes none: as a Python step of a guest that is
 * gone is dropped. */
static void cycle_release(struct hv_host *h)
{
    uint32_t n = h->nr_held;
    h->nr_held = 0;
    for (uint32_t i = 0; i < n; i++) {
        struct hv_held_step s = h->held[i];
        struct hv_partition *p = hv_partition_by_id(h, s.partition_id);
        struct hv_vp *vp = p && s.vp_index < HV_MAX_VPS ? p->vps[s.vp_index] : NULL;
        if (vp && vp->cycle.armed && vp->exec == HV_VP_GUEST && !vp->in_resume_list)
            vp_step(h, vp, s.op, s.arg);
    }
}

static struct hv_vp *cycle_vp(struct hv_host *h, uint64_t partition_id, uint32_t vp_index)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    return p && vp_index < HV_MAX_VPS ? p->vps[vp_index] : NULL;
}

int hv_vp_cycle(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, const struct hv_cycle *c)
{
    struct hv_vp *vp = cycle_vp(h, partition_id, vp_index);
    if (!vp || vp->exec != HV_VP_GUEST || vp->in_resume_list || vp->guest_kind != HV_GUEST_PYTHON
        || (c->kind != HV_CYCLE_KERNEL && c->kind != HV_CYCLE_PLAIN)
        || (c->phase != HV_CYCLE_COMPUTE && c->phase != HV_CYCLE_IDLE)
        || (!c->busy_ns && !c->idle_ns) || c->step_ns > (c->phase == HV_CYCLE_COMPUTE ? c->left_ns : UINT64_MAX))
        return -1;
    uint64_t steps = vp->cycle.steps;
    vp->cycle = *c;
    vp->cycle.steps = steps;
    vp->cycle.armed = 1;
    return 0;
}

int hv_vp_cycle_state(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, struct hv_cycle *out)
{
    struct hv_vp *vp = cycle_vp(h, partition_id, vp_index);
    if (!vp)
        return -1;
    *out = vp->cycle;
    return 0;
}

int hv_vp_cycle_sync(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint64_t horizon, uint32_t dirty)
{
    struct hv_vp *vp = cycle_vp(h, partition_id, vp_index);
    if (!vp)
        return -1;
    vp->cycle.horizon = horizon;
    vp->cycle.dirty = dirty;
    return 0;
}

/* ---- the loop ------------------------------------------------------------------------------------ */

int hv_run_init(struct hv_host *h)
{
    h->lps = calloc(h->cfg.logical_processors, sizeof(*h->lps));
    if (!h->lps)
        return -1;
    for (uint32_t i = 0; i < h->cfg.logical_processors; i++) {
        h->lps[i].index = i;
        h->lps[i].core = i / h->cfg.smt;
    }
    h->sched = h->cfg.scheduler == 1 ? &hv_sched_core : &hv_sched_classic;
    hv_digest_init(&h->trace);
    hv_event_push(h, h->costs.window_ns, HV_EV_WINDOW, 0, 0, 0, 0);
    return 0;
}

void hv_run_fini(struct hv_host *h)
{
    free(h->sched_log);
    free(h->lps);
    free(h->events);
    free(h->rq);
    hv_sched_rq_fini(h);
    free(h->resume);
    free(h->held);
}

uint32_t hv_run(struct hv_host *h, uint64_t until, struct hv_resume *out, uint32_t max)
{
    cycle_release(h);  /* (none, unless Python stepped its VPs one by one: hv_vp_step) */
    for (;;) {
        /* Hand Python a batch: every VP whose guest must step at this instant, once every
         * event of this instant has been processed (so one crossing serves them all). */
        if (h->nr_resume && (!h->nr_events || h->events[0].time > h->now || h->nr_resume >= max)) {
            /* The leading VPs whose cycle the core can take step here, in list order; from the
             * first that needs its Python guest on, every VP goes to Python, so the steps are
             * applied in the order Python would have applied them all. The core's steps are
             * held while the rest of the batch is with Python and go in before Python's (the
             * guests' code runs before any step of their batch is applied); with no VP for
             * Python they go in at once. A step that resumes its VP at once (an interrupt
             * pending) puts it at the list's end, as hv_run_batch would. */
            uint32_t n = h->nr_resume < max ? h->nr_resume : max, k = 0;
            for (uint32_t i = 0; i < n; i++) {
                struct hv_vp *vp = h->resume[i]; /* (re-read: a step may grow the list) */
                vp->in_resume_list = false;
                if (!k && cycle_ready(h, vp)) {
                    vp->resume_reason = 0;
                    cycle_hold(h, cycle_decide(h, vp));
                    continue;
                }
                out[k].partition_id = h->parts[vp->part_slot]->id;
                out[k].vp_index = vp->index;
                out[k].reason = vp->resume_reason;
                out[k].pending_sints = vp->pending_sints;
                out[k].guest_handle = vp->guest_handle;
                out[k].work_left_ns = vp->work_left_ns;
                k++;
                vp->pending_sints = 0;
                vp->work_left_ns = 0;
                vp->resume_reason = 0;
                vp->cycle.armed = 0;
            }
            memmove(h->resume, h->resume + n, (h->nr_resume - n) * sizeof(*h->resume));
            h->nr_resume -= n;
            if (k)
                return k;    /* the held steps go in first when Python's come back */
            cycle_release(h);
            continue;
        }
        if (!h->nr_resume)
            schedule_idle(h); /* LPs are handed out once the guests of this instant have stepped */
        if (!h->nr_events || h->events[0].time > until) {
            /* The VPs on LPs are not charged here: a run's end is where its caller chose to
             * look, not an event, and charging moves a running VP's vruntime, which the
             * scheduler reads (a waking VP's floor, hv_sched_fair_rejoin). So a run cut at any
             * instant takes the decisions of one that is not (its trace is the same); readers of
             * run time add the running slice's part themselves (hv_vp_info, hv_partition_info,
             * hv_lp_busy, the VP_RUNTIME register). */
            if (until > h->now)
                h->now = until;
            return 0;
        }
        struct hv_event e = ev_pop(h);
        h->now = e.time;
        process(h, &e);
    }
}

/* A guest's step, for a VP waiting for it (whoever takes it: its Python guest, or the core for a cycle). */
static int vp_step(struct hv_host *h, struct hv_vp *vp, uint32_t op, uint64_t arg)
{
    if (__builtin_expect(vp->stall_ns != 0, 0) && op >= HV_STEP_COMPUTE && op <= HV_STEP_COMPUTE_INTR
        && op != HV_STEP_STOP) {
        /* Its guest touched pages that had not arrived (post-copy, pager.c): the VP waits off its LP
         * for as long as fetching them took, interrupts staying pending, and the step follows
         * (on_wake). The wait is not run time: the VP did not run. */
        trace4(h, 0x6000, vp->part_slot, vp->index, vp->stall_ns);
        vp->stalled = true;
        vp->stalled_op = op;
        vp->stalled_arg = arg;
        halt(h, vp, vp->stall_ns, true);
        vp->stall_ns = 0;
        return 0;
    }
    trace4(h, 0x4000 + op, vp->part_slot, vp->index, arg);
    switch (op) {
    case HV_STEP_COMPUTE:
        vp->work_ns = arg;
        make_runnable(h, vp);
        return 0;
    case HV_STEP_COMPUTE_INTR:
        if (vp->pending_sints) { /* an interrupt is already pending: it ends the work before it starts */
            vp->work_left_ns = arg;
            resume_add(h, vp, HV_RESUME_INTERRUPT);
            return 0;
        }
        vp->work_ns = arg;
        vp->interruptible = true;
        make_runnable(h, vp);
        return 0;
    case HV_STEP_HALT:
        if (vp->pending_sints) { /* an interrupt is already pending: HLT falls through */
            resume_add(h, vp, HV_RESUME_INTERRUPT);
            return 0;
        }
        halt(h, vp, arg, false);
        return 0;
    case HV_STEP_SLEEP:
        halt(h, vp, arg ? arg : 1, true);
        return 0;
    case HV_STEP_STOP:
        vp->guest_kind = HV_GUEST_NONE;
        vp->cycle.armed = 0;
        halt(h, vp, 0, false);
        return 0;
    default:
        return -1;
    }
}

int hv_vp_step(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t op, uint64_t arg)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    struct hv_vp *vp = p && vp_index < HV_MAX_VPS ? p->vps[vp_index] : NULL;
    if (!vp || vp->exec != HV_VP_GUEST || vp->in_resume_list)
        return -1;
    return vp_step(h, vp, op, arg);
}

int hv_vp_set_guest(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t kind, uint64_t a)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    struct hv_vp *vp = p && vp_index < HV_MAX_VPS ? p->vps[vp_index] : NULL;
    if (!vp || kind > HV_GUEST_TICK)
        return -1;
    bool running = vp->exec != HV_VP_STOPPED;
    if (running)
        vp_stop(h, vp);
    vp->guest_kind = kind;
    vp->tick_work_ns = kind == HV_GUEST_TICK ? a : 0;
    vp->guest_handle = kind == HV_GUEST_PYTHON ? (uint32_t)a : 0;
    if (running || p->started)
        vp_start(h, vp);
    return 0;
}

uint64_t hv_now(struct hv_host *h) { return h->now; }

void hv_trace_digest(struct hv_host *h, uint8_t *out)
{
    memcpy(out, &h->trace.a, 8);
    memcpy(out + 8, &h->trace.b, 8);
}

int hv_vp_info(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, struct hv_vp_info *out)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    struct hv_vp *vp = p && vp_index < HV_MAX_VPS ? p->vps[vp_index] : NULL;
    if (!vp)
        return -1;
    out->exec = vp->exec;
    out->lp = vp->lp;
    out->guest_kind = vp->guest_kind;
    out->pending_sints = vp->pending_sints;
    /* A running VP is charged at events only (its slice's end, a window's start), not when a run
     * stops (hv_run): what it ran since it was last charged is spent here as account() would. */
    uint64_t ran = vp->exec == HV_VP_RUNNING ? h->now - vp->dispatched_at : 0;
    uint64_t d = ran < vp->debt_ns ? ran : vp->debt_ns;
    out->run_time_ns = vp->run_time_ns + ran;
    out->debt_ns = vp->debt_ns - d;
    out->work_ns = vp->work_ns == HV_WORK_FOREVER ? HV_WORK_FOREVER
                   : vp->work_ns - ((ran - d) < vp->work_ns ? (ran - d) : vp->work_ns);
    out->window_used_ns = hv_sched_window_used(h, vp) + ran;
    return 0;
}

void hv_run_stats(struct hv_host *h, struct hv_run_stats *out)
{
    out->now = h->now;
    out->events_processed = h->events_processed;
    out->events_pending = h->nr_events;
    out->runnable = h->nr_rq;
}

uint64_t hv_lp_busy(struct hv_host *h, uint32_t lp)
{
    if (lp >= h->cfg.logical_processors)
        return 0;
    struct hv_vp *vp = h->lps[lp].vp;
    return h->lps[lp].busy_ns + (vp ? h->now - vp->dispatched_at : 0);
}

int32_t hv_lp_running(struct hv_host *h, uint32_t lp, uint64_t *partition_id)
{
    if (lp >= h->cfg.logical_processors || !h->lps[lp].vp)
        return -1;
    *partition_id = h->parts[h->lps[lp].vp->part_slot]->id;
    return (int32_t)h->lps[lp].vp->index;
}

void hv_apply_batch(struct hv_host *h, const uint64_t *steps, uint32_t n_steps, int32_t *refused,
                    const struct hv_resume *batch)
{
    *refused = -1;
    cycle_release(h);
    for (uint32_t i = 0; i < n_steps; i++) {
        uint32_t op = (uint32_t)steps[2 * i];
        if (op && hv_vp_step(h, batch[i].partition_id, batch[i].vp_index, op, steps[2 * i + 1]) != 0 && *refused < 0)
            *refused = (int32_t)i;
    }
}

uint32_t hv_run_batch(struct hv_host *h, const uint64_t *steps, uint32_t n_steps, int32_t *refused,
                      uint64_t until, struct hv_resume *batch, uint64_t *words, uint32_t max)
{
    hv_apply_batch(h, steps, n_steps, refused, batch);
    uint32_t k = hv_run(h, until, batch, max);
    for (uint32_t i = 0; i < k; i++)
        words[i] = (uint64_t)batch[i].guest_handle << 32 | (batch[i].work_left_ns ? 1u << 31 : 0)
                   | (uint64_t)(batch[i].reason & 0x7fff) << 16 | (batch[i].pending_sints & 0xffff);
    return k;
}
