/* The hypercall page (a hypervisor-provided overlay page): what Python may ask of it. Plain
 * declarations: both C (core.h includes this file) and the cffi cdef. */

/* The GPA of partition `id`'s hypercall page while HV_X64_MSR_HYPERCALL enables it, else -1
 * (also for an unknown partition). Introspection: lets a faulting store be named. */
int64_t hv_partition_overlay_gpa(struct hv_host *h, uint64_t id);
