/* synic.c: the synthetic interrupt controller (placeholder until the SynIC lands). */
#include "core.h"

void hv_synic_init(struct hv_synic *s)
{
    for (int i = 0; i < 16; i++)
        s->sint[i] = 0x10000; /* masked at reset */
}

void hv_synic_fini(struct hv_synic *s) { (void)s; }

void hv_synic_digest(const struct hv_synic *s, struct hv_digest *d)
{
    hv_digest_u64(d, s->scontrol);
    hv_digest_u64(d, s->simp);
    hv_digest_u64(d, s->siefp);
    for (int i = 0; i < 16; i++)
        hv_digest_u64(d, s->sint[i]);
}

int hv_synic_register_privilege(uint32_t name) { (void)name; return -1; }
bool hv_synic_register_read_only(uint32_t name) { (void)name; return false; }
uint64_t hv_synic_get_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name)
{
    (void)h; (void)p; (void)vp; (void)name;
    return 0;
}
uint16_t hv_synic_check_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name, uint64_t value)
{
    (void)h; (void)p; (void)vp; (void)name; (void)value;
    return HV_STATUS_INVALID_PARAMETER;
}
void hv_synic_set_register(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name, uint64_t value)
{
    (void)h; (void)p; (void)vp; (void)name; (void)value;
}
void hv_synic_timer_expired(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t index, uint64_t guard)
{
    (void)h; (void)p; (void)vp; (void)index; (void)guard;
}
void hv_synic_consume(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t sints)
{
    (void)h; (void)p; (void)vp; (void)sints;
}
