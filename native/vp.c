/* vp.c: virtual processors: CreateVp, DeleteVp and the register subset of Get/SetVpRegisters.
 *
 * Registers hvsim implements (HV_REGISTER_NAME): RAX..R15, RIP, RFLAGS, CR0, CR3, CR4,
 * GuestOsId, Hypercall (partition-wide; the hypercall page, overlay.c), VpIndex (read-only),
 * VpRuntime (read-only), TimeRefCount (read-only).
 * A partition may read and write its own VPs' registers when it holds the privilege that gates
 * the register; the parent reaches its children's VPs only with AccessVpRegisters.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

struct hv_vp *hv_vp_alloc(uint32_t index)
{
    struct hv_vp *vp = calloc(1, sizeof(*vp));
    if (vp) {
        vp->index = index;
        vp->rflags = 0x2; /* bit 1 of RFLAGS always reads as one */
        vp->lp = -1;
        vp->rq_pos = -1;
        vp->exec = HV_VP_STOPPED;
        hv_synic_init(&vp->synic);
    }
    return vp;
}

void hv_vp_free(struct hv_vp *vp)
{
    hv_synic_fini(&vp->synic);
    free(vp);
}

uint16_t hv_call_create_vp(struct hv_call *c)
{
    struct hv_in_create_vp in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = hv_call_target(c, in.partition_id, false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (in.flags != 0 || in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (in.proximity_domain_info != 0)
        return HV_STATUS_INVALID_PROXIMITY_DOMAIN_INFO;
    if (p->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    if (in.vp_index >= HV_MAX_VPS)
        return HV_STATUS_INVALID_VP_INDEX;
    if (p->vps[in.vp_index])
        return HV_STATUS_INVALID_VP_STATE;
    if (p->pool_free.len < HV_VP_PAGES || !hv_page_list_reserve(&p->pool_used, HV_VP_PAGES))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    if (p->started)
        return HV_STATUS_INVALID_PARTITION_STATE; /* VPs are added before a partition starts */
    struct hv_vp *vp = hv_vp_alloc(in.vp_index);
    if (!vp)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply */
    vp->part_slot = p->slot;
    vp->pool_page = hv_pool_take(c->h, p);
    p->vps[in.vp_index] = vp;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_delete_vp(struct hv_call *c)
{
    struct hv_in_delete_vp in;
    memcpy(&in, c->in, sizeof(in));
    struct hv_partition *p = hv_call_target(c, in.partition_id, false);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (in.padding != 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (in.vp_index >= HV_MAX_VPS || !p->vps[in.vp_index])
        return HV_STATUS_INVALID_VP_INDEX;
    if (p->vps[in.vp_index]->exec != HV_VP_STOPPED)
        return HV_STATUS_INVALID_VP_STATE; /* a VP taking part in scheduling cannot go */
    /* apply: its message queues go with it. The port buffers those messages held are free again
     * (a port's buffers in use are the ones its queued messages name); the count of messages that
     * never arrived stays visible in the partition's counters. */
    struct hv_vp *vp = p->vps[in.vp_index];
    for (uint32_t i = 0; i < HV_SYNIC_SINT_COUNT; i++)
        p->counters.messages_dropped += vp->synic.queue[i].len;
    hv_pool_give_back(c->h, p, vp->pool_page);
    p->vps[in.vp_index] = NULL;
    hv_vp_free(vp);
    return HV_STATUS_SUCCESS;
}

/* The privilege a register needs when a partition touches its own VP; -1: unknown register. */
static int register_privilege(uint32_t name)
{
    if ((name >= HV_X64_REGISTER_RAX && name <= HV_X64_REGISTER_RFLAGS) ||
        name == HV_X64_REGISTER_CR0 || name == HV_X64_REGISTER_CR3 || name == HV_X64_REGISTER_CR4)
        return 64; /* architectural state: no synthetic privilege */
    switch (name) {
    case HV_REGISTER_GUEST_OS_ID: return HV_PRIV_ACCESS_HYPERCALL_MSRS;
    case HV_REGISTER_HYPERCALL: return HV_PRIV_ACCESS_HYPERCALL_MSRS;
    case HV_REGISTER_VP_INDEX: return HV_PRIV_ACCESS_VP_INDEX;
    case HV_REGISTER_VP_RUNTIME: return HV_PRIV_ACCESS_VP_RUNTIME_REG;
    case HV_REGISTER_TIME_REF_COUNT: return HV_PRIV_ACCESS_PARTITION_REF_COUNTER;
    default: return hv_synic_register_privilege(name);
    }
}

static bool register_read_only(uint32_t name)
{
    return name == HV_REGISTER_VP_INDEX || name == HV_REGISTER_VP_RUNTIME ||
           name == HV_REGISTER_TIME_REF_COUNT || hv_synic_register_read_only(name);
}

static uint64_t *register_slot(struct hv_vp *vp, uint32_t name)
{
    if (name >= HV_X64_REGISTER_RAX && name <= HV_X64_REGISTER_R15)
        return &vp->gp[name - HV_X64_REGISTER_RAX];
    switch (name) {
    case HV_X64_REGISTER_RIP: return &vp->rip;
    case HV_X64_REGISTER_RFLAGS: return &vp->rflags;
    case HV_X64_REGISTER_CR0: return &vp->cr0;
    case HV_X64_REGISTER_CR3: return &vp->cr3;
    case HV_X64_REGISTER_CR4: return &vp->cr4;
    case HV_REGISTER_GUEST_OS_ID: return &vp->guest_os_id;
    default: return NULL;
    }
}

static uint64_t register_read(struct hv_host *h, struct hv_partition *p, struct hv_vp *vp, uint32_t name)
{
    switch (name) {
    case HV_REGISTER_VP_INDEX: return vp->index;
    case HV_REGISTER_VP_RUNTIME: /* a running VP's slice so far included: it is charged only at events */
        return (vp->run_time_ns + (vp->exec == HV_VP_RUNNING ? h->now - vp->dispatched_at : 0)) / 100;
    case HV_REGISTER_TIME_REF_COUNT: return h->now / 100; /* reference time counts 100 ns */
    case HV_REGISTER_HYPERCALL: return p->hypercall_msr;
    default: {
        uint64_t *slot = register_slot(vp, name);
        return slot ? *slot : hv_synic_get_register(h, p, vp, name);
    }
    }
}

/* Decode the header shared by Get/SetVpRegisters: the target VP and the access check. */
static uint16_t registers_target(struct hv_call *c, struct hv_vp **out, bool *self, struct hv_partition **part)
{
    struct hv_in_vp_registers in;
    memcpy(&in, c->in, sizeof(in));
    if (in.input_vtl != 0 || in.padding[0] || in.padding[1] || in.padding[2])
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_partition *p = hv_call_target(c, in.partition_id, true);
    if (!p)
        return HV_STATUS_INVALID_PARTITION_ID;
    *self = p == c->caller;
    if (!*self && !(c->caller->privileges & HV_PRIV(HV_PRIV_ACCESS_VP_REGISTERS)))
        return HV_STATUS_ACCESS_DENIED;
    uint32_t idx = in.vp_index == HV_VP_INDEX_SELF && *self ? c->vp->index : in.vp_index;
    if (idx >= HV_MAX_VPS || !p->vps[idx])
        return HV_STATUS_INVALID_VP_INDEX;
    *out = p->vps[idx];
    *part = p;
    return HV_STATUS_SUCCESS;
}

static uint16_t check_register(const struct hv_call *c, uint32_t name, bool self, bool write)
{
    int priv = register_privilege(name);
    if (priv < 0)
        return HV_STATUS_INVALID_PARAMETER;
    if (self && priv < 64 && !(c->caller->privileges & HV_PRIV(priv)))
        return HV_STATUS_ACCESS_DENIED;
    if (write && register_read_only(name))
        return HV_STATUS_INVALID_PARAMETER;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_get_vp_registers(struct hv_call *c)
{
    struct hv_vp *vp;
    struct hv_partition *p;
    bool self;
    uint16_t st = registers_target(c, &vp, &self, &p);
    if (st != HV_STATUS_SUCCESS)
        return st;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        st = check_register(c, hv_load32(c->in + 16 + (size_t)i * 4), self, false);
        if (st != HV_STATUS_SUCCESS)
            return st;
    }
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        hv_store64(c->out + (size_t)i * 16, register_read(c->h, p, vp, hv_load32(c->in + 16 + (size_t)i * 4)));
        hv_store64(c->out + (size_t)i * 16 + 8, 0);
    }
    return HV_STATUS_SUCCESS;
}

/* SetVpRegisters' decode: every element checked against the state before the call. */
static uint16_t set_registers_decode(struct hv_call *c, struct hv_vp **vp_out, struct hv_partition **p_out)
{
    struct hv_vp *vp;
    struct hv_partition *p;
    bool self;
    uint16_t st = registers_target(c, &vp, &self, &p);
    if (st != HV_STATUS_SUCCESS)
        return st;
    *vp_out = vp;
    *p_out = p;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        struct hv_register_assoc a;
        memcpy(&a, c->in + 16 + (size_t)i * sizeof(a), sizeof(a));
        if (a.reserved1 || a.reserved2 || a.value_high)
            return HV_STATUS_INVALID_PARAMETER;
        st = check_register(c, a.name, self, true);
        if (st == HV_STATUS_SUCCESS && a.name == HV_REGISTER_HYPERCALL)
            st = hv_overlay_check_msr(c->h, p, vp, a.value_low);
        else if (st == HV_STATUS_SUCCESS && !register_slot(vp, a.name))
            st = hv_synic_check_register(c->h, p, vp, a.name, a.value_low);
        if (st != HV_STATUS_SUCCESS)
            return st;
        /* N.B. hvsim refuses two writes to one register in a batch, so that checking each
         * write against the state before the batch is the same as checking them in turn. */
        for (uint32_t j = c->rep_start; j < i; j++)
            if (hv_load32(c->in + 16 + (size_t)j * sizeof(a)) == a.name)
                return HV_STATUS_INVALID_PARAMETER;
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_set_vp_registers(struct hv_call *c)
{
    struct hv_vp *vp;
    struct hv_partition *p;
    uint16_t st = set_registers_decode(c, &vp, &p);
    if (st != HV_STATUS_SUCCESS)
        return st;
    for (uint32_t i = c->rep_start; i < c->rep_end; i++) {
        struct hv_register_assoc a;
        memcpy(&a, c->in + 16 + (size_t)i * sizeof(a), sizeof(a));
        uint64_t *slot = register_slot(vp, a.name);
        if (slot)
            *slot = a.value_low;
        else if (a.name == HV_REGISTER_HYPERCALL)
            p->hypercall_msr = a.value_low;
        else
            hv_synic_set_register(c->h, p, vp, a.name, a.value_low);
    }
    return HV_STATUS_SUCCESS;
}

uint16_t hv_check_set_vp_registers(struct hv_host *h, uint64_t caller_id, const uint8_t *in, uint32_t count)
{
    struct hv_partition *caller = hv_partition_by_id(h, caller_id);
    if (!caller || !caller->vps[0])
        return HV_STATUS_INVALID_PARTITION_ID;
    if (count == 0 || count > (HV_PAGE_SIZE - 16) / sizeof(struct hv_register_assoc))
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_call c = { .h = h, .caller = caller, .vp = caller->vps[0], .code = HVCALL_SET_VP_REGISTERS,
                         .rep_count = count, .rep_start = 0, .rep_end = count, .in = in,
                         .in_len = 16 + count * (uint32_t)sizeof(struct hv_register_assoc) };
    struct hv_vp *vp;
    struct hv_partition *p;
    return set_registers_decode(&c, &vp, &p);
}
