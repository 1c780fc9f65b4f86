/* SynIC and port introspection, for the host's owner (tests, management), never reachable by a
 * partition. cffi cdef only (C declares these in synic.h / port.h). */

#define HV_MAX_PORTS_PER_PARTITION ...
#define HV_MAX_CONNECTIONS_PER_PARTITION ...

/* Messages waiting in the hypervisor for SINT `sint` of a VP; -1: no such VP or SINT. */
int32_t hv_synic_queue_length(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t sint);
/* Interrupts the SynIC has raised on SINT `sint` of a VP since it was created; -1: none such. */
int64_t hv_synic_interrupt_count(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t sint);
/* Synthetic timer `timer` of a VP: when its event fires (ns), whether it is armed, whether its
 * TimerExpired message waits in a queue. 0, or -1 for no such VP or timer. */
int hv_synic_timer_state(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t timer,
                         uint64_t *due_ns, int32_t *armed, int32_t *pending);
/* Buffers of a port holding messages not yet copied into a SIM slot; -1: no such port. */
int32_t hv_port_undelivered(struct hv_host *h, uint64_t partition_id, uint32_t port_id);
/* Ports and connections a partition owns. 0, or -1 for no such partition. */
int hv_port_counts(struct hv_host *h, uint64_t partition_id, uint32_t *ports, uint32_t *connections);
/* A partition's connection: -1 none, 0 dangling (its port is gone), 1 connected (to the port
 * written to *port_partition_id / *port_id). */
int hv_connection_target(struct hv_host *h, uint64_t partition_id, uint32_t connection_id,
                         uint64_t *port_partition_id, uint32_t *port_id);
