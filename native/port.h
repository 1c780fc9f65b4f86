/* port.h: ports and connections, the only paths messages and events travel (placeholder). */
#ifndef HV_PORT_H
#define HV_PORT_H

#include <stdint.h>

struct hv_host;
struct hv_digest;

struct hv_port_space {
    uint32_t nr_ports, nr_connections;
};

void hv_ports_init(struct hv_port_space *ps);
void hv_ports_fini(struct hv_port_space *ps);
/* Partition `slot` is going away: drop its ports, its connections and connections to its ports. */
void hv_ports_drop_partition(struct hv_host *h, uint32_t slot);
void hv_ports_digest(const struct hv_port_space *ps, struct hv_digest *d);

#endif
