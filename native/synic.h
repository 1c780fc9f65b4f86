/* synic.h: the synthetic interrupt controller of one VP (placeholder: synic.c fills it in). */
#ifndef HV_SYNIC_H
#define HV_SYNIC_H

#include <stdbool.h>
#include <stdint.h>

struct hv_host;
struct hv_partition;
struct hv_vp;
struct hv_digest;

struct hv_synic {
    uint64_t scontrol, simp, siefp;
    uint64_t sint[16];
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

#endif
