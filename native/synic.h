/* synic.h: the synthetic interrupt controller of one VP (synic.c): its SINT registers, the
 * message (SIM) and event-flag (SIEF) pages it names, the per-SINT message queues the hypervisor
 * keeps, and the four synthetic timers.
 *
 * Invariants:
 *  - a queued message is a port message (its bytes sit in one of the port's 16 buffers, in a page
 *    of the port owner's pool) or a timer message (built at delivery from its timer);
 *  - each queue is FIFO; a SIM slot receives only the head of its SINT's queue, only while the
 *    slot's MessageType is None (0);
 *  - a timer has at most one TimerExpired message queued (`pending`).
 */
#ifndef HV_SYNIC_H
#define HV_SYNIC_H

#include <stdbool.h>
#include <stdint.h>

#include "hv_abi.h"

struct hv_host;
struct hv_partition;
struct hv_vp;
struct hv_digest;

enum hv_msg_kind {
    HV_MSG_PORT = 1,              /* posted through a connection to a message port */
    HV_MSG_TIMER = 2,             /* a synthetic timer's TimerExpired message */
};

/* A message the hypervisor holds until its SIM slot is free. */
struct hv_queued_msg {
    uint32_t kind;                /* enum hv_msg_kind */
    uint32_t sender_slot;         /* port messages: slot of the partition that posted it */
    uint64_t port_serial;         /* port messages: the port's serial (port.c; never reused) */
    uint64_t buf_pfn;             /* port messages: SPA page of the port's buffers (owner HV) */
    uint32_t buf;                 /* port messages: buffer index in that page; timers: timer index */
    uint32_t pad;
    uint64_t tag;                 /* port messages: digest of the 256 bytes; timers: expiration time */
};

struct hv_msg_queue {             /* one (VP, SINT): FIFO, head at e[0] */
    struct hv_queued_msg *e;
    uint32_t len, cap;
};

struct hv_stimer {
    uint64_t config, count;       /* STIMERn_CONFIG / STIMERn_COUNT as the guest reads them */
    uint64_t guard;               /* guard of its armed HV_EV_STIMER event; 0 = not armed */
    uint64_t due_ns;              /* when the armed event fires (simulated ns) */
    uint64_t pending_expiry;      /* expiration time (100 ns) its queued message reports */
    bool pending;                 /* its TimerExpired message waits in a queue */
};

struct hv_synic {
    uint64_t scontrol, simp, siefp;
    uint64_t sint[HV_SYNIC_SINT_COUNT];
    struct hv_msg_queue queue[HV_SYNIC_SINT_COUNT];
    struct hv_stimer timer[HV_SYNIC_STIMER_COUNT];
    uint64_t interrupts[HV_SYNIC_SINT_COUNT]; /* statistics: interrupts raised per SINT (not state) */
};

void hv_synic_init(struct hv_synic *s);
void hv_synic_fini(struct hv_synic *s);
void hv_synic_digest(const struct hv_synic *s, struct hv_digest *d);
/* Registers: the privilege bit a SynIC/timer register needs (-1: not a SynIC register). */
int hv_synic_register_privilege(uint32_t name);
bool hv_synic_register_read_only(uint32_t name);
uint64_t hv_synic_get_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name);
/* Decode a write (HV_STATUS_SUCCESS or the status to fail the call with), then apply it. */
uint16_t hv_synic_check_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name, uint64_t value);
void hv_synic_set_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name, uint64_t value);
/* The built-in tick guest took its interrupt: copy nothing out, free every occupied message slot
 * of the SINTs raised, clear their event flags, and do what EOM does (rescan the queues). */
void hv_synic_consume(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sints);
/* A synthetic timer's event fired (run.c dispatches HV_EV_STIMER here). */
void hv_synic_timer_expired(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t index, uint64_t guard);

/* ---- for port.c: delivery through a port ------------------------------------------------------ */
/* May something be sent to SINT `sint` of vp? INVALID_SYNIC_STATE if the SynIC is disabled or the
 * SINT masked, and, for an event, if the SIEF page is disabled or not mapped writable. */
uint16_t hv_synic_check_target(struct hv_host *h, const struct hv_partition *p, const struct hv_vp *vp,
                               uint32_t sint, bool event);
/* Bit i set: buffer i of port `serial` holds a message still queued on (vp, sint). */
uint32_t hv_synic_port_buffers(const struct hv_synic *s, uint32_t sint, uint64_t serial);
/* Room for one more message on (vp, sint) (decode step: may allocate, changes no state). */
bool hv_synic_queue_reserve(struct hv_synic *s, uint32_t sint);
/* Queue a message (room reserved) and deliver what can be delivered. */
void hv_synic_enqueue(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sint,
                      const struct hv_queued_msg *m);
/* Set event flag `flag` of SINT `sint` (checked by hv_synic_check_target); interrupt on 0 -> 1. */
void hv_synic_signal(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sint, uint32_t flag);
/* Drop queued messages of port `serial` / posted by partition slot `slot`. */
void hv_synic_purge_port(struct hv_synic *s, uint32_t sint, uint64_t serial);
void hv_synic_purge_sender(struct hv_synic *s, uint32_t sint, uint32_t slot);

/* ---- introspection (native/api/synic.h) ------------------------------------------------------- */
int32_t hv_synic_queue_length(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t sint);
int64_t hv_synic_interrupt_count(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t sint);
int hv_synic_timer_state(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t timer,
                         uint64_t *due_ns, int32_t *armed, int32_t *pending);

#endif
