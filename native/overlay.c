/* overlay.c: the hypercall page, the one hypervisor-provided overlay page hvsim has.
 *
 * A guest enables it by writing HV_X64_MSR_HYPERCALL (HV_REGISTER_HYPERCALL through
 * Get/SetVpRegisters): bit 0 enable, bit 1 locked, 11:2 reserved, 63:12 the GPA page. While it is
 * enabled the hypervisor's page covers that GPA page of the partition: loads there read the
 * hypercall code sequence, and every store there faults, whoever makes it (the guest's own
 * stores, hypercall output blocks, SynIC message or flag delivery), leaving the page unchanged.
 * The partition's own page under it is neither read nor written, and is seen again as it was
 * when the overlay is disabled or moved.
 *
 * Invariants: the overlay is never a frame of anyone (it has no SPA page: its bytes are the
 * constant image below), so it changes no ownership, reach or pool count; a store that faults
 * changes nothing (memory.c checks every page of a store before it writes any).
 *
 * hvsim decisions where the TLFS leaves room:
 *  - the MSR is partition-wide (TLFS) and read or written through any VP of the partition; it
 *    needs AccessHypercallMsrs for the partition's own VPs (the parent uses AccessVpRegisters);
 *  - enabling needs a non-zero guest OS id on the VP the write goes through, checked against the
 *    state before the SetVpRegisters call (so GuestOsId and the page in one batch are refused);
 *    disabling is always allowed. The refusal is INVALID_PARAMETER, as a #GP'ing MSR write is
 *    everywhere in hvsim; so is a reserved bit, and any write once the locked bit is set;
 *  - the GPA page must be mapped in the partition and owned by it (the root: one of its own
 *    pages, not one a child granted it), so the overlay never covers another's memory;
 *  - the image is x64 Intel's `vmcall; ret` (0f 01 c1 c3) and int3 (0xcc) in the rest of the
 *    page: a guest that calls anywhere but offset 0 traps at once instead of running on through
 *    zero bytes (00 00 is `add [rax], al`, which would execute quietly).
 *  - FUTURE: grants and own views take the partition's page under the overlay as it is (they are
 *    views of frames, and the overlay has none).
 */
#include <string.h>

#include "core.h"

static const uint8_t hypercall_code[] = { 0x0f, 0x01, 0xc1, 0xc3 }; /* vmcall; ret */
#define OVERLAY_FILL 0xCC                                           /* int3 */

bool hv_overlay_covers(const struct hv_partition *p, uint64_t gpa_page)
{
    return (p->hypercall_msr & HV_HYPERCALL_MSR_ENABLE) &&
           (p->hypercall_msr >> HV_SYNIC_PAGE_GPFN_SHIFT) == gpa_page;
}

void hv_overlay_read(size_t off, uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = off + i < sizeof(hypercall_code) ? hypercall_code[off + i] : OVERLAY_FILL;
}

uint16_t hv_overlay_check_msr(struct hv_host *h, const struct hv_partition *p, const struct hv_vp *vp, uint64_t value)
{
    if (value & HV_HYPERCALL_MSR_RSVD_MASK)
        return HV_STATUS_INVALID_PARAMETER;
    if (p->hypercall_msr & HV_HYPERCALL_MSR_LOCKED)
        return HV_STATUS_INVALID_PARAMETER; /* immutable until the partition is reset */
    if (!(value & HV_HYPERCALL_MSR_ENABLE))
        return HV_STATUS_SUCCESS;
    if (!vp->guest_os_id)
        return HV_STATUS_INVALID_PARAMETER; /* TLFS: a guest OS id must be written first */
    uint64_t gpa_page = value >> HV_SYNIC_PAGE_GPFN_SHIFT, pfn;
    if (!hv_gpa_translate(h, p, gpa_page, 0, &pfn) || h->owner[pfn] != p->slot)
        return HV_STATUS_INVALID_PARAMETER;
    return HV_STATUS_SUCCESS;
}

int64_t hv_partition_overlay_gpa(struct hv_host *h, uint64_t id)
{
    struct hv_partition *p = hv_partition_by_id(h, id);
    if (!p || !(p->hypercall_msr & HV_HYPERCALL_MSR_ENABLE))
        return -1;
    return (int64_t)((p->hypercall_msr >> HV_SYNIC_PAGE_GPFN_SHIFT) << HV_PAGE_SHIFT);
}
