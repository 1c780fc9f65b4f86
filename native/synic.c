/* synic.c: the synthetic interrupt controller of each VP: SINT/SCONTROL/SIMP/SIEFP/EOM and the
 * synthetic-timer registers, message delivery into the SIM page, event flags in the SIEF page,
 * and timer expiry.
 *
 * Delivery (TLFS "SynIC message flow"): the hypervisor keeps a FIFO per (VP, SINT). The head is
 * copied into the SINT's SIM slot only when the SynIC and the SIM page are enabled, the page is
 * mapped read/write in the VP's partition, and the slot's MessageType (read from guest memory at
 * that moment) is None. Otherwise the message stays queued and, if the slot was busy, the slot's
 * MessagePending flag is set so the guest knows to write EOM. The queues are re-examined when a
 * message is queued, on a write to EOM, SCONTROL or SIMP and when the built-in tick guest
 * consumes its SINTs.
 * A delivery costs the receiving VP costs.message_ns (an event flag costs costs.event_ns) and
 * raises the SINT's interrupt unless the SINT is masked or polled.
 *
 * hvsim decisions where the TLFS leaves room:
 *  - a register write with a reserved bit set fails with INVALID_PARAMETER (a real MSR write
 *    would #GP); so does an unmasked SINT with a vector below 16, STIMER direct mode, and
 *    enabling SIMP/SIEFP on a GPFN the partition has not mapped readable and writable;
 *  - writing SCONTROL or SIMP rescans the queues (so what was queued while either was off is
 *    delivered once both are on); unmasking a SINT does not: the guest writes EOM;
 *  - a whole 256-byte HV_MESSAGE is copied into the slot (payload zero-padded), never stale bytes;
 *  - STIMER: enabling with SINTx = 0 leaves the timer disabled, writing COUNT = 0 disables it and
 *    a non-zero COUNT enables it when AutoEnable is set (as KVM does); an enabled timer with
 *    COUNT = 0 is idle. One-shot COUNT is an absolute reference time (100 ns), already past
 *    means "now". Lazy is accepted and has no effect (expiries are never late in simulated time).
 *    A periodic timer's period is at least costs.stimer_min_period_ns (100 us by default), and
 *    every expiry costs the timer's VP costs.interrupt_ns, whether its message is delivered or not.
 *    A TimerExpired message is queued like any message, at most one per timer: an expiry while
 *    the previous one is still queued is dropped.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

#define SINTS HV_SYNIC_SINT_COUNT
#define TIMERS HV_SYNIC_STIMER_COUNT

void hv_synic_init(struct hv_synic *s)
{
    memset(s, 0, sizeof(*s));
    for (uint32_t i = 0; i < SINTS; i++)
        s->sint[i] = HV_SINT_RESET;
}

void hv_synic_fini(struct hv_synic *s)
{
    for (uint32_t i = 0; i < SINTS; i++) {
        free(s->queue[i].e);
        s->queue[i].e = NULL;
        s->queue[i].len = s->queue[i].cap = 0;
    }
}

void hv_synic_digest(const struct hv_synic *s, struct hv_digest *d)
{
    hv_digest_u64(d, s->scontrol);
    hv_digest_u64(d, s->simp);
    hv_digest_u64(d, s->siefp);
    for (uint32_t i = 0; i < SINTS; i++) {
        const struct hv_msg_queue *q = &s->queue[i];
        hv_digest_u64(d, s->sint[i]);
        hv_digest_u64(d, q->len);
        for (uint32_t j = 0; j < q->len; j++) {
            const struct hv_queued_msg *m = &q->e[j];
            hv_digest_u64(d, ((uint64_t)m->kind << 32) | m->sender_slot);
            hv_digest_u64(d, m->port_serial);
            hv_digest_u64(d, m->buf_pfn);
            hv_digest_u64(d, m->buf);
            hv_digest_u64(d, m->tag);
        }
    }
    for (uint32_t i = 0; i < TIMERS; i++) {
        const struct hv_stimer *t = &s->timer[i];
        hv_digest_u64(d, t->config);
        hv_digest_u64(d, t->count);
        hv_digest_u64(d, t->guard);
        hv_digest_u64(d, t->due_ns);
        hv_digest_u64(d, t->pending ? t->pending_expiry : ~0ull);
    }
}

/* ---- guest pages ----------------------------------------------------------------------------- */

/* The bytes at `off` of the SynIC page `reg` (SIMP or SIEFP value) names, or NULL if the page is
 * disabled or not mapped readable and writable in p. */
static uint8_t *synic_page(struct hv_host *h, const struct hv_partition *p, uint64_t reg, uint32_t off,
                           uint64_t *pfn)
{
    if (!(reg & HV_SYNIC_PAGE_ENABLE))
        return NULL;
    if (!hv_gpa_translate(h, p, reg >> HV_SYNIC_PAGE_GPFN_SHIFT, HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE, pfn))
        return NULL;
    /* Only a page the partition owns: the root also reaches pages its children granted it, and
     * the hypervisor must never write one partition's messages into another's memory. */
    if (h->owner[*pfn] != p->slot)
        return NULL;
    return hv_spa_page(h, *pfn) + off;
}

/* synic_page for the VP whose SynIC `s` is: a page that has not arrived yet (post-copy) is fetched
 * on that VP's behalf and stalls it (pager.c). */
static uint8_t *vp_synic_page(struct hv_host *h, const struct hv_partition *p, const struct hv_synic *s,
                              uint64_t reg, uint32_t off, uint64_t *pfn)
{
    struct hv_vp *outer = h->touch_vp;
    h->touch_vp = (struct hv_vp *)((char *)s - offsetof(struct hv_vp, synic)); /* s is vp->synic */
    uint8_t *at = synic_page(h, p, reg, off, pfn);
    h->touch_vp = outer;
    return at;
}

/* SINT `sint`'s slot in the SIM page, if messages can be delivered there now. */
static uint8_t *message_slot(struct hv_host *h, const struct hv_partition *p, const struct hv_synic *s,
                             uint32_t sint, uint64_t *pfn)
{
    if (!(s->scontrol & HV_SCONTROL_ENABLE))
        return NULL;
    return vp_synic_page(h, p, s, s->simp, sint * HV_MESSAGE_SIZE, pfn);
}

static uint8_t *flags_area(struct hv_host *h, const struct hv_partition *p, const struct hv_synic *s,
                           uint32_t sint, uint64_t *pfn)
{
    return vp_synic_page(h, p, s, s->siefp, sint * HV_EVENT_FLAGS_BYTES, pfn);
}

/* ---- delivery ---------------------------------------------------------------------------------- */

static void interrupt(struct hv_host *h, struct hv_vp *vp, uint32_t sint)
{
    /* A masked SINT loses its edge; a polled one is read by its guest without interrupts. */
    if (vp->synic.sint[sint] & (HV_SINT_MASKED | HV_SINT_POLLING))
        return;
    vp->synic.interrupts[sint]++;
    hv_vp_raise_interrupt(h, vp, sint);
}

/* Write message m into a free slot (all 256 bytes), MessagePending set if `more` wait behind it;
 * the delivery costs the VP and raises its SINT. */
static void deliver(struct hv_host *h, struct hv_vp *vp, uint32_t sint, const struct hv_queued_msg *m,
                    uint8_t *slot, uint64_t pfn, bool more)
{
    struct hv_synic *s = &vp->synic;
    if (m->kind == HV_MSG_PORT) {
        memcpy(slot, hv_spa_page(h, m->buf_pfn) + (size_t)m->buf * HV_MESSAGE_SIZE, HV_MESSAGE_SIZE);
    } else {
        struct hv_stimer *t = &s->timer[m->buf];
        struct hv_message_header hd = { HV_MESSAGE_TYPE_TIMER_EXPIRED, sizeof(struct hv_timer_message_payload), 0, 0, 0 };
        struct hv_timer_message_payload pl = { m->buf, 0, t->pending_expiry, h->now / 100 };
        memcpy(slot, &hd, sizeof(hd));
        memcpy(slot + sizeof(hd), &pl, sizeof(pl));
        memset(slot + sizeof(hd) + sizeof(pl), 0, HV_MESSAGE_SIZE - sizeof(hd) - sizeof(pl));
        t->pending = false;
    }
    if (more)
        slot[5] |= HV_MESSAGE_FLAG_PENDING;
    hv_page_mark_dirty(h, pfn);
    hv_vp_charge(h, vp, h->costs.message_ns);
    interrupt(h, vp, sint);
}

/* Deliver the head of (vp, sint)'s queue if its slot is free; otherwise flag the slot. */
static void pump(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sint)
{
    struct hv_synic *s = &vp->synic;
    struct hv_msg_queue *q = &s->queue[sint];
    uint64_t pfn;
    if (!q->len)
        return;
    uint8_t *slot = message_slot(h, p, s, sint, &pfn);
    if (!slot)
        return;
    if (hv_load32(slot) != HV_MESSAGE_TYPE_NONE) {
        if (!(slot[5] & HV_MESSAGE_FLAG_PENDING)) {
            slot[5] |= HV_MESSAGE_FLAG_PENDING;
            hv_page_mark_dirty(h, pfn);
        }
        return;
    }
    struct hv_queued_msg m = q->e[0];
    memmove(q->e, q->e + 1, (size_t)--q->len * sizeof(*q->e));
    deliver(h, vp, sint, &m, slot, pfn, q->len != 0);
}

static void eom(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp)
{
    /* Most queues are empty: look before calling (pump's frame holds a whole message). */
    for (uint32_t i = 0; i < SINTS; i++)
        if (vp->synic.queue[i].len)
            pump(h, p, vp, i);
}

uint16_t hv_synic_check_target(struct hv_host *h, const struct hv_partition *p, const struct hv_vp *vp,
                               uint32_t sint, bool event)
{
    const struct hv_synic *s = &vp->synic;
    uint64_t pfn;
    if (!(s->scontrol & HV_SCONTROL_ENABLE) || (s->sint[sint] & HV_SINT_MASKED))
        return HV_STATUS_INVALID_SYNIC_STATE;
    if (event && !flags_area(h, p, s, sint, &pfn))
        return HV_STATUS_INVALID_SYNIC_STATE;
    return HV_STATUS_SUCCESS;
}

uint32_t hv_synic_port_buffers(const struct hv_synic *s, uint32_t sint, uint64_t serial)
{
    const struct hv_msg_queue *q = &s->queue[sint];
    uint32_t used = 0;
    for (uint32_t i = 0; i < q->len; i++)
        if (q->e[i].kind == HV_MSG_PORT && q->e[i].port_serial == serial)
            used |= 1u << q->e[i].buf;
    return used;
}

bool hv_synic_queue_reserve(struct hv_synic *s, uint32_t sint)
{
    struct hv_msg_queue *q = &s->queue[sint];
    if (q->len < q->cap)
        return true;
    uint32_t cap = q->cap ? q->cap * 2 : 16;
    struct hv_queued_msg *n = realloc(q->e, (size_t)cap * sizeof(*n));
    if (!n)
        return false;
    q->e = n;
    q->cap = cap;
    return true;
}

void hv_synic_enqueue(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sint,
                      const struct hv_queued_msg *m)
{
    struct hv_msg_queue *q = &vp->synic.queue[sint];
    if (!q->len) { /* the common case, an empty queue and a free slot: what push and pump would do */
        uint64_t pfn;
        uint8_t *slot = message_slot(h, p, &vp->synic, sint, &pfn);
        if (slot && hv_load32(slot) == HV_MESSAGE_TYPE_NONE) {
            deliver(h, vp, sint, m, slot, pfn, false);
            return;
        }
    }
    q->e[q->len++] = *m;
    pump(h, p, vp, sint);
}

void hv_synic_signal(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sint, uint32_t flag)
{
    uint64_t pfn;
    uint8_t *area = flags_area(h, p, &vp->synic, sint, &pfn);
    uint8_t bit = (uint8_t)(1u << (flag % 8));
    if (!area || (area[flag / 8] & bit))
        return; /* already set: the guest has not looked yet, and gets no second edge */
    area[flag / 8] |= bit;
    hv_page_mark_dirty(h, pfn);
    hv_vp_charge(h, vp, h->costs.event_ns);
    interrupt(h, vp, sint);
}

static void purge(struct hv_msg_queue *q, uint32_t sender, uint64_t serial)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < q->len; i++) {
        const struct hv_queued_msg *m = &q->e[i];
        bool drop = m->kind == HV_MSG_PORT && (serial ? m->port_serial == serial : m->sender_slot == sender);
        if (!drop)
            q->e[n++] = *m;
    }
    q->len = n;
}

void hv_synic_purge_port(struct hv_synic *s, uint32_t sint, uint64_t serial)
{
    purge(&s->queue[sint], 0, serial);
}

void hv_synic_purge_sender(struct hv_synic *s, uint32_t sint, uint32_t slot)
{
    purge(&s->queue[sint], slot, 0);
}

void hv_synic_consume(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sints)
{
    struct hv_synic *s = &vp->synic;
    for (uint32_t left = sints & ((1u << SINTS) - 1); left; left &= left - 1) {
        uint32_t i = (uint32_t)__builtin_ctz(left);
        uint64_t pfn;
        uint8_t *slot = vp_synic_page(h, p, s, s->simp, i * HV_MESSAGE_SIZE, &pfn);
        if (slot) {
            memset(slot, 0, 4);   /* MessageType = None */
            slot[5] = 0;          /* MessagePending cleared */
            hv_page_mark_dirty(h, pfn);
        }
        uint8_t *flags = flags_area(h, p, s, i, &pfn);
        if (flags) {
            memset(flags, 0, HV_EVENT_FLAGS_BYTES);
            hv_page_mark_dirty(h, pfn);
        }
    }
    eom(h, p, vp);
}

/* ---- synthetic timers -------------------------------------------------------------------------- */

static uint64_t ticks_to_ns(uint64_t ticks)
{
    return ticks > UINT64_MAX / 100 ? UINT64_MAX : ticks * 100;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* A periodic timer's period: what the guest asked for, but never shorter than the host's minimum
 * (Hyper-V too holds periodic timers to a minimum period): a 100 ns period would otherwise make
 * ten million expiries per simulated second. */
static uint64_t timer_period_ns(const struct hv_host *h, const struct hv_stimer *t)
{
    uint64_t ns = ticks_to_ns(t->count);
    return ns < h->costs.stimer_min_period_ns ? h->costs.stimer_min_period_ns : ns;
}

/* (Re)arm timer i after a change: a fresh guard makes every earlier event of it stale. Guards
 * come from one host-wide sequence, so an event can never match a timer of a VP created later
 * in the same slot and index. */
static void timer_arm(struct hv_host *h, struct hv_vp *vp, uint32_t i)
{
    struct hv_stimer *t = &vp->synic.timer[i];
    t->guard = 0;
    t->due_ns = 0;
    if (!(t->config & HV_STIMER_ENABLE) || t->count == 0)
        return;
    if (t->config & HV_STIMER_PERIODIC) {
        t->due_ns = add_sat(h->now, timer_period_ns(h, t));
    } else {
        uint64_t at = ticks_to_ns(t->count);
        t->due_ns = at > h->now ? at : h->now;
    }
    t->guard = ++h->ports.stimer_seq;
    hv_event_push(h, t->due_ns, HV_EV_STIMER, vp->part_slot, vp->index, i, t->guard);
}

/* Enabled only with a target SINT: SINTx = 0 leaves a timer disabled (TLFS, KVM). */
static uint64_t timer_config_effective(uint64_t config)
{
    if (!(config & HV_STIMER_SINTX_MASK))
        config &= ~HV_STIMER_ENABLE;
    return config;
}

void hv_synic_timer_expired(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t index, uint64_t guard)
{
    if (index >= TIMERS)
        return;
    struct hv_stimer *t = &vp->synic.timer[index];
    if (guard == 0 || guard != t->guard)
        return; /* reconfigured (or disabled) since this event was pushed */
    uint64_t expiry = t->due_ns / 100;
    uint32_t sint = (uint32_t)((t->config & HV_STIMER_SINTX_MASK) >> HV_STIMER_SINTX_SHIFT);
    /* The hypervisor's work for the expiry (its timer interrupt) is the VP's, delivered or not. */
    hv_vp_charge(h, vp, h->costs.interrupt_ns);
    if (t->config & HV_STIMER_PERIODIC) {
        t->due_ns = add_sat(t->due_ns, timer_period_ns(h, t));
        t->guard = ++h->ports.stimer_seq;
        hv_event_push(h, t->due_ns, HV_EV_STIMER, vp->part_slot, vp->index, index, t->guard);
    } else {
        t->config &= ~HV_STIMER_ENABLE;
        t->guard = 0;
    }
    if (t->pending || !hv_synic_queue_reserve(&vp->synic, sint))
        return; /* its previous expiry is still queued: this one is dropped */
    t->pending = true;
    t->pending_expiry = expiry;
    struct hv_queued_msg m = { .kind = HV_MSG_TIMER, .buf = index, .tag = expiry };
    hv_synic_enqueue(h, p, vp, sint, &m);
}

/* ---- registers ----------------------------------------------------------------------------------- */

static bool is_stimer(uint32_t name)
{
    return name >= HV_REGISTER_STIMER0_CONFIG && name <= HV_REGISTER_STIMER3_COUNT;
}

static bool is_sint(uint32_t name)
{
    return name >= HV_REGISTER_SINT0 && name <= HV_REGISTER_SINT15;
}

int hv_synic_register_privilege(uint32_t name)
{
    if (is_sint(name) || (name >= HV_REGISTER_SCONTROL && name <= HV_REGISTER_EOM))
        return HV_PRIV_ACCESS_SYNIC_REGS;
    if (is_stimer(name))
        return HV_PRIV_ACCESS_SYNTHETIC_TIMER_REGS;
    return -1;
}

bool hv_synic_register_read_only(uint32_t name)
{
    return name == HV_REGISTER_SVERSION;
}

uint64_t hv_synic_get_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name)
{
    (void)h;
    (void)p;
    const struct hv_synic *s = &vp->synic;
    if (is_sint(name))
        return s->sint[name - HV_REGISTER_SINT0];
    if (is_stimer(name)) {
        const struct hv_stimer *t = &s->timer[(name - HV_REGISTER_STIMER0_CONFIG) / 2];
        return (name - HV_REGISTER_STIMER0_CONFIG) % 2 ? t->count : t->config;
    }
    switch (name) {
    case HV_REGISTER_SCONTROL: return s->scontrol;
    case HV_REGISTER_SVERSION: return HV_SYNIC_VERSION;
    case HV_REGISTER_SIEFP: return s->siefp;
    case HV_REGISTER_SIMP: return s->simp;
    default: return 0; /* EOM is write-only and reads 0 */
    }
}

static uint16_t check_page(struct hv_host *h, struct hv_partition *p, uint64_t value)
{
    uint64_t pfn;
    if (value & HV_SYNIC_PAGE_RSVD_MASK)
        return HV_STATUS_INVALID_PARAMETER;
    if ((value & HV_SYNIC_PAGE_ENABLE) && !synic_page(h, p, value, 0, &pfn))
        return HV_STATUS_INVALID_PARAMETER;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_synic_check_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name, uint64_t value)
{
    (void)vp;
    if (is_sint(name)) {
        if (value & ~HV_SINT_VALID_MASK)
            return HV_STATUS_INVALID_PARAMETER;
        if (!(value & HV_SINT_MASKED) && (value & HV_SINT_VECTOR_MASK) < HV_SYNIC_MIN_VECTOR)
            return HV_STATUS_INVALID_PARAMETER;
        return HV_STATUS_SUCCESS;
    }
    if (is_stimer(name)) {
        if ((name - HV_REGISTER_STIMER0_CONFIG) % 2)
            return HV_STATUS_SUCCESS; /* COUNT: any value */
        if ((value & ~HV_STIMER_CONFIG_VALID_MASK) || (value & HV_STIMER_DIRECT_MODE))
            return HV_STATUS_INVALID_PARAMETER; /* FUTURE: direct mode (an APIC vector, no message) */
        return HV_STATUS_SUCCESS;
    }
    switch (name) {
    case HV_REGISTER_SCONTROL:
        return value & ~HV_SCONTROL_ENABLE ? HV_STATUS_INVALID_PARAMETER : HV_STATUS_SUCCESS;
    case HV_REGISTER_SIEFP:
    case HV_REGISTER_SIMP:
        return check_page(h, p, value);
    case HV_REGISTER_EOM:
        return HV_STATUS_SUCCESS;
    default:
        return HV_STATUS_INVALID_PARAMETER; /* SVERSION is refused earlier as read-only */
    }
}

void hv_synic_set_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name, uint64_t value)
{
    struct hv_synic *s = &vp->synic;
    if (is_sint(name)) {
        s->sint[name - HV_REGISTER_SINT0] = value;
        return;
    }
    if (is_stimer(name)) {
        uint32_t i = (name - HV_REGISTER_STIMER0_CONFIG) / 2;
        struct hv_stimer *t = &s->timer[i];
        if ((name - HV_REGISTER_STIMER0_CONFIG) % 2) {
            t->count = value;
            if (value == 0)
                t->config &= ~HV_STIMER_ENABLE;
            else if (t->config & HV_STIMER_AUTO_ENABLE)
                t->config = timer_config_effective(t->config | HV_STIMER_ENABLE);
        } else {
            t->config = timer_config_effective(value);
        }
        timer_arm(h, vp, i);
        return;
    }
    switch (name) {
    /* Turning delivery on looks at the queues at once: what was queued while the SynIC or the
     * SIM page was off would otherwise wait for an EOM the guest has no reason to write. */
    case HV_REGISTER_SCONTROL: s->scontrol = value; eom(h, p, vp); break;
    case HV_REGISTER_SIEFP: s->siefp = value; break;
    case HV_REGISTER_SIMP: s->simp = value; eom(h, p, vp); break;
    case HV_REGISTER_EOM: eom(h, p, vp); break;
    default: break;
    }
}

/* ---- introspection ------------------------------------------------------------------------------- */

static struct hv_vp *vp_of(struct hv_host *h, uint64_t partition_id, uint32_t vp_index)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    return p && vp_index < HV_MAX_VPS ? p->vps[vp_index] : NULL;
}

int32_t hv_synic_queue_length(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t sint)
{
    struct hv_vp *vp = vp_of(h, partition_id, vp_index);
    return vp && sint < SINTS ? (int32_t)vp->synic.queue[sint].len : -1;
}

int64_t hv_synic_interrupt_count(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t sint)
{
    struct hv_vp *vp = vp_of(h, partition_id, vp_index);
    return vp && sint < SINTS ? (int64_t)vp->synic.interrupts[sint] : -1;
}

int hv_synic_timer_state(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t timer,
                         uint64_t *due_ns, int32_t *armed, int32_t *pending)
{
    struct hv_vp *vp = vp_of(h, partition_id, vp_index);
    if (!vp || timer >= TIMERS)
        return -1;
    const struct hv_stimer *t = &vp->synic.timer[timer];
    *due_ns = t->due_ns;
    *armed = t->guard != 0;
    *pending = t->pending;
    return 0;
}
