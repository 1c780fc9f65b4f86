/* port.c: ports and connections (placeholder until they land). */
#include "core.h"

void hv_ports_init(struct hv_port_space *ps) { ps->nr_ports = ps->nr_connections = 0; }
void hv_ports_fini(struct hv_port_space *ps) { (void)ps; }
void hv_ports_drop_partition(struct hv_host *h, uint32_t slot) { (void)h; (void)slot; }
void hv_ports_digest(const struct hv_port_space *ps, struct hv_digest *d)
{
    hv_digest_u64(d, ps->nr_ports);
    hv_digest_u64(d, ps->nr_connections);
}
