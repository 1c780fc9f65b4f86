/* port.h: ports and connections (port.c), the only paths messages and events travel between
 * partitions: a connection, owned by the sender, names a port, owned by the receiver; the port
 * names the receiver's VP and SINT.
 *
 * Invariants:
 *  - a partition's port ids and connection ids are unique within it, and 24-bit;
 *  - a connection points at a live port or at nothing (it dangles once its port is deleted);
 *  - a port's `connections` counts the connections pointing at it;
 *  - a message port owns one page of its partition's pool (its 16 message buffers);
 *  - every table belongs to a live partition (hv_ports_drop_partition empties it).
 */
#ifndef HV_PORT_H
#define HV_PORT_H

#include <stdint.h>

struct hv_host;
struct hv_digest;

#define HV_MAX_PORTS_PER_PARTITION       65536u /* hvsim's cap (INV-ACCOUNT); INSUFFICIENT_MEMORY past it */
#define HV_MAX_CONNECTIONS_PER_PARTITION 65536u

struct hv_port {
    uint64_t serial;              /* host-unique, never reused: names the port in message queues */
    uint32_t id;                  /* HV_PORT_ID, unique within its owner */
    uint32_t owner_slot;          /* the PortPartition: receives what arrives */
    uint64_t connection_partition;/* id of the one partition allowed to connect (ids are never reused) */
    uint32_t type;                /* HV_PORT_TYPE_MESSAGE or HV_PORT_TYPE_EVENT */
    uint32_t target_sint, target_vp;
    uint32_t base_flag, flag_count;/* event ports: flags base_flag .. base_flag+flag_count-1 */
    uint64_t buf_pfn;             /* a page of the owner's pool: a message port's 16 buffers; an
                                     event port keeps one too, so that no port is free of cost */
    uint32_t connections;         /* connections pointing at it */
};

struct hv_connection {
    uint32_t id;                  /* HV_CONNECTION_ID, unique within its owner */
    uint32_t type;                /* the port type it was made for */
    struct hv_port *port;         /* NULL once its port is gone: the connection dangles */
    uint64_t pfn;                 /* the page of its own partition's pool it costs (A7: a
                                     connection comes from the sender's pool) */
};

struct hv_port_table {            /* what one partition owns, each array sorted by id */
    struct hv_port **ports;
    uint32_t nr_ports, cap_ports;
    struct hv_connection *conns;
    uint32_t nr_conns, cap_conns;
};

struct hv_port_space {
    struct hv_port_table **by_slot; /* HV_MAX_PARTITIONS entries; NULL until the first port or
                                       connection, freed again when the last one goes */
    uint32_t nr_ports, nr_connections; /* totals over every partition */
    uint64_t next_serial;         /* the last port serial handed out */
    uint64_t stimer_seq;          /* the last synthetic-timer event guard handed out (synic.c) */
};

void hv_ports_init(struct hv_port_space *ps);
void hv_ports_fini(struct hv_port_space *ps);
/* Partition `slot` is going away: drop its ports (connections to them dangle), its connections,
 * and the messages it posted that still wait in queues. */
void hv_ports_drop_partition(struct hv_host *h, uint32_t slot);
void hv_ports_digest(const struct hv_port_space *ps, struct hv_digest *d);

/* ---- introspection (native/api/synic.h) ------------------------------------------------------- */
int32_t hv_port_undelivered(struct hv_host *h, uint64_t partition_id, uint32_t port_id);
int hv_port_counts(struct hv_host *h, uint64_t partition_id, uint32_t *ports, uint32_t *connections);
int hv_connection_target(struct hv_host *h, uint64_t partition_id, uint32_t connection_id,
                         uint64_t *port_partition_id, uint32_t *port_id);

#endif
