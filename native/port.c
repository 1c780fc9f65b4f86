/* port.c: ports and connections, and the hypercalls that use them: CreatePort, ConnectPort,
 * DeletePort, DisconnectPort, PostMessage and SignalEvent.
 *
 * What they cost: every port takes one page of its owner's pool (a message port keeps its 16
 * buffers there; an event port only holds it) and every connection one page of its own
 * partition's pool, the sender's (threat model A7). An empty pool fails Create/ConnectPort with
 * INSUFFICIENT_MEMORY; DeletePort and DisconnectPort give the page back.
 *
 * A message posted on a connection lands in one of its port's 16 buffers (its pool page) and
 * waits in the target VP's queue for its SINT (synic.c) until the SynIC copies it into the SIM
 * slot. A buffer is in use from the post until that copy; with all 16 in use a
 * post fails with INSUFFICIENT_BUFFERS. SignalEvent sets a flag and needs no buffer.
 *
 * Who may do what: the dispatcher checks the privilege (CreatePort for Create/DeletePort,
 * ConnectPort for Connect/DisconnectPort, PostMessages, SignalEvents). A partition named in
 * Create/Connect/Delete/DisconnectPort must be the caller or a child of the caller
 * (INVALID_PARTITION_ID otherwise) and initialized ("active"; INVALID_PARTITION_STATE).
 * PostMessage and SignalEvent name only the caller's own connections, so a partition can reach
 * no port it was not connected to by its parent.
 *
 * hvsim decisions where the TLFS leaves room:
 *  - an id with a reserved bit (31:24) set, or one already in use in its partition, fails with
 *    INVALID_PORT_ID / INVALID_CONNECTION_ID;
 *  - VTL fields must be 0 (no VSM) and every reserved field zero: INVALID_PARAMETER;
 *  - monitor ports are not implemented (INVALID_PARAMETER); an event port needs 1..2048 flags
 *    inside its SINT's 2048; a port targets one existing VP (no HV_ANY_VP);
 *  - a connection to a deleted port dangles for good (INVALID_PORT_ID): a new port with the same
 *    id does not revive it, since it may have been created for another connection partition;
 *  - PostMessage/SignalEvent on a connection made for the other port type: INVALID_CONNECTION_ID;
 *  - INVALID_SYNIC_STATE when the target VP's SynIC is disabled (SCONTROL) or its SINT masked,
 *    and for SignalEvent when its SIEF page is disabled or unmapped. A disabled SIM page is not
 *    an error: the message waits in the queue;
 *  - DisconnectPort leaves queued messages alone (TLFS); deleting a port drops its queued
 *    messages; deleting a partition also drops the messages it posted.
 */
#include <stdlib.h>
#include <string.h>

#include "core.h"

/* ---- tables ---------------------------------------------------------------------------------- */

static struct hv_port_table *table(const struct hv_port_space *ps, uint32_t slot)
{
    return ps->by_slot ? ps->by_slot[slot] : NULL;
}

/* The table of slot, created if needed (a decode-step allocation: no state changes). */
static struct hv_port_table *table_make(struct hv_port_space *ps, uint32_t slot)
{
    if (!ps->by_slot && !(ps->by_slot = calloc(HV_MAX_PARTITIONS, sizeof(*ps->by_slot))))
        return NULL;
    if (!ps->by_slot[slot])
        ps->by_slot[slot] = calloc(1, sizeof(struct hv_port_table));
    return ps->by_slot[slot];
}

static void table_free(struct hv_port_table *t)
{
    for (uint32_t i = 0; i < t->nr_ports; i++)
        free(t->ports[i]);
    free(t->ports);
    free(t->conns);
    free(t);
}

/* Index of the first port with id >= `id` (the arrays are sorted by id). */
static uint32_t port_index(const struct hv_port_table *t, uint32_t id)
{
    uint32_t lo = 0, hi = t->nr_ports;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->ports[mid]->id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static uint32_t conn_index(const struct hv_port_table *t, uint32_t id)
{
    uint32_t lo = 0, hi = t->nr_conns;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (t->conns[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct hv_port *find_port(const struct hv_port_space *ps, uint32_t slot, uint32_t id)
{
    const struct hv_port_table *t = table(ps, slot);
    if (!t || (id & ~HV_PORT_ID_MASK))
        return NULL;
    uint32_t i = port_index(t, id);
    return i < t->nr_ports && t->ports[i]->id == id ? t->ports[i] : NULL;
}

static struct hv_connection *find_conn(const struct hv_port_space *ps, uint32_t slot, uint32_t id)
{
    const struct hv_port_table *t = table(ps, slot);
    if (!t || (id & ~HV_PORT_ID_MASK))
        return NULL;
    uint32_t i = conn_index(t, id);
    return i < t->nr_conns && t->conns[i].id == id ? &t->conns[i] : NULL;
}

static bool grow(void **arr, uint32_t *cap, uint32_t need, size_t elem)
{
    if (need <= *cap)
        return true;
    uint32_t n = *cap ? *cap * 2 : 8;
    void *p = realloc(*arr, (size_t)n * elem);
    if (!p)
        return false;
    *arr = p;
    *cap = n;
    return true;
}

void hv_ports_init(struct hv_port_space *ps)
{
    memset(ps, 0, sizeof(*ps));
}

void hv_ports_fini(struct hv_port_space *ps)
{
    if (ps->by_slot) {
        for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++)
            if (ps->by_slot[s])
                table_free(ps->by_slot[s]);
        free(ps->by_slot);
    }
    ps->by_slot = NULL;
    ps->nr_ports = ps->nr_connections = 0;
}

/* ---- removal ---------------------------------------------------------------------------------- */

/* Delete a port: its queued messages go, connections to it dangle, its page returns to the pool. */
static void port_destroy(struct hv_host *h, struct hv_partition *owner, struct hv_port *port)
{
    struct hv_port_space *ps = &h->ports;
    struct hv_vp *vp = owner->vps[port->target_vp];
    if (vp)
        hv_synic_purge_port(&vp->synic, port->target_sint, port->serial);
    for (uint32_t s = 0; port->connections && s < HV_MAX_PARTITIONS; s++) {
        struct hv_port_table *t = table(ps, s);
        for (uint32_t i = 0; t && i < t->nr_conns; i++)
            if (t->conns[i].port == port) {
                t->conns[i].port = NULL;
                port->connections--;
            }
    }
    hv_pool_give_back(h, owner, port->buf_pfn);
    struct hv_port_table *t = table(ps, owner->slot);
    uint32_t i = port_index(t, port->id);
    memmove(t->ports + i, t->ports + i + 1, (size_t)(t->nr_ports - i - 1) * sizeof(*t->ports));
    t->nr_ports--;
    ps->nr_ports--;
    free(port);
}

/* Disconnect: the port loses one connection, the connection's page returns to its pool. */
static void conn_remove(struct hv_host *h, struct hv_partition *owner, struct hv_connection *conn)
{
    struct hv_port_space *ps = &h->ports;
    struct hv_port_table *t = table(ps, owner->slot);
    if (conn->port)
        conn->port->connections--;
    hv_pool_give_back(h, owner, conn->pfn);
    uint32_t i = (uint32_t)(conn - t->conns);
    memmove(t->conns + i, t->conns + i + 1, (size_t)(t->nr_conns - i - 1) * sizeof(*t->conns));
    t->nr_conns--;
    ps->nr_connections--;
}

/* Partition teardown, linear in what it touches: each of its ports and connections once, each
 * table that may hold connections to its ports once, each message queue once. (Deleting its ports
 * one by one would scan every connection table per port and search the pool per page.) */
void hv_ports_drop_partition(struct hv_host *h, uint32_t slot)
{
    struct hv_port_space *ps = &h->ports;
    struct hv_port_table *t = table(ps, slot);
    if (t) {
        /* Connections to its ports live only in the tables of the ports' connection partitions
         * (ConnectPort checks it): mark those partitions, then visit each of their tables once. */
        uint64_t connectors[HV_MAX_PARTITIONS / 64] = { 0 };
        uint32_t dangling = 0;
        for (uint32_t i = 0; i < t->nr_ports; i++) {
            h->teardown_visits++;
            if (t->ports[i]->connections) {
                struct hv_partition *cp = hv_partition_by_id(h, t->ports[i]->connection_partition);
                if (cp)
                    connectors[cp->slot / 64] |= 1ull << (cp->slot % 64);
                dangling += t->ports[i]->connections;
            }
        }
        for (uint32_t s = 0; dangling && s < HV_MAX_PARTITIONS; s++) {
            struct hv_port_table *ct = (connectors[s / 64] >> (s % 64)) & 1 ? table(ps, s) : NULL;
            for (uint32_t i = 0; ct && i < ct->nr_conns; i++) {
                h->teardown_visits++;
                struct hv_port *port = ct->conns[i].port;
                if (port && port->owner_slot == slot) {
                    ct->conns[i].port = NULL; /* it dangles for good */
                    port->connections--;
                    dangling--;
                }
            }
        }
        /* Its own connections: the ports they name (in other partitions) lose one each. */
        for (uint32_t i = 0; i < t->nr_conns; i++) {
            h->teardown_visits++;
            if (t->conns[i].port)
                t->conns[i].port->connections--;
        }
        /* Its message ports' queued messages and the pages its ports and connections cost need
         * no separate undoing: the queues are its own VPs' (they go with them) and the pages are
         * in its pool (which goes back to its parent whole, zeroed). Connections of others to
         * its ports keep their pages (in their own pools) until they are disconnected. */
        ps->nr_ports -= t->nr_ports;
        ps->nr_connections -= t->nr_conns;
        table_free(t);
        ps->by_slot[slot] = NULL;
    }
    /* Messages it posted that still wait in other partitions' queues: visit every queue that
     * holds anything, once (a queued port message sits in its port's target VP's queue). */
    for (uint32_t s = 0; s < HV_MAX_PARTITIONS; s++) {
        struct hv_partition *q = h->parts[s];
        for (uint32_t v = 0; q && s != slot && v < HV_MAX_VPS; v++) {
            struct hv_vp *vp = q->vps[v];
            for (uint32_t sint = 0; vp && sint < HV_SYNIC_SINT_COUNT; sint++)
                if (vp->synic.queue[sint].len) {
                    h->teardown_visits += vp->synic.queue[sint].len;
                    hv_synic_purge_sender(&vp->synic, sint, slot);
                }
        }
    }
    if (ps->by_slot && ps->nr_ports == 0 && ps->nr_connections == 0)
        hv_ports_fini(ps); /* nothing left: give the tables back (host teardown ends here) */
}

void hv_ports_digest(const struct hv_port_space *ps, struct hv_digest *d)
{
    hv_digest_u64(d, ps->nr_ports);
    hv_digest_u64(d, ps->nr_connections);
    hv_digest_u64(d, ps->next_serial);
    hv_digest_u64(d, ps->stimer_seq);
    for (uint32_t s = 0; ps->by_slot && s < HV_MAX_PARTITIONS; s++) {
        const struct hv_port_table *t = ps->by_slot[s];
        if (!t || (!t->nr_ports && !t->nr_conns))
            continue; /* an empty table is no state: a failed call may have allocated it */
        hv_digest_u64(d, s);
        hv_digest_u64(d, t->nr_ports);
        for (uint32_t i = 0; i < t->nr_ports; i++) {
            const struct hv_port *p = t->ports[i];
            hv_digest_u64(d, p->serial);
            hv_digest_u64(d, ((uint64_t)p->id << 32) | p->type);
            hv_digest_u64(d, p->connection_partition);
            hv_digest_u64(d, ((uint64_t)p->target_vp << 32) | p->target_sint);
            hv_digest_u64(d, ((uint64_t)p->base_flag << 32) | p->flag_count);
            hv_digest_u64(d, p->buf_pfn);
            hv_digest_u64(d, p->connections);
        }
        hv_digest_u64(d, t->nr_conns);
        for (uint32_t i = 0; i < t->nr_conns; i++) {
            const struct hv_connection *c = &t->conns[i];
            hv_digest_u64(d, ((uint64_t)c->id << 32) | c->type);
            hv_digest_u64(d, c->port ? c->port->serial : 0);
            hv_digest_u64(d, c->pfn);
        }
    }
}

/* ---- CreatePort, ConnectPort, DeletePort, DisconnectPort ----------------------------------------- */

static uint16_t check_port_info(const struct hv_port_info *pi)
{
    if (pi->reserved || pi->rsvdz)
        return HV_STATUS_INVALID_PARAMETER;
    switch (pi->port_type) {
    case HV_PORT_TYPE_MESSAGE:
        if (pi->base_flag_number || pi->flag_count)
            return HV_STATUS_INVALID_PARAMETER; /* part of a message port's RsvdZ */
        break;
    case HV_PORT_TYPE_EVENT:
        if (pi->flag_count == 0 || (uint32_t)pi->base_flag_number + pi->flag_count > HV_EVENT_FLAGS_COUNT)
            return HV_STATUS_INVALID_PARAMETER;
        break;
    default:
        return HV_STATUS_INVALID_PARAMETER; /* FUTURE: monitor ports, with the VMBus monitor page */
    }
    return pi->target_sint < HV_SYNIC_SINT_COUNT ? HV_STATUS_SUCCESS : HV_STATUS_INVALID_PARAMETER;
}

uint16_t hv_call_create_port(struct hv_call *c)
{
    struct hv_port_space *ps = &c->h->ports;
    struct hv_in_create_port in;
    memcpy(&in, c->in, sizeof(in));
    const struct hv_port_info *pi = &in.port_info;
    if (in.port_vtl || in.min_connection_vtl || in.rsvdz)
        return HV_STATUS_INVALID_PARAMETER;
    uint16_t st = check_port_info(pi);
    if (st != HV_STATUS_SUCCESS)
        return st;
    if (in.proximity_domain_info)
        return HV_STATUS_INVALID_PROXIMITY_DOMAIN_INFO;
    struct hv_partition *pp = hv_call_target(c, in.port_partition, true);
    struct hv_partition *cp = hv_call_target(c, in.connection_partition, true);
    if (!pp || !cp)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (pp->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    if (pi->target_vp >= HV_MAX_VPS || !pp->vps[pi->target_vp])
        return HV_STATUS_INVALID_VP_INDEX;
    if ((in.port_id & ~HV_PORT_ID_MASK) || find_port(ps, pp->slot, in.port_id))
        return HV_STATUS_INVALID_PORT_ID;
    bool message = pi->port_type == HV_PORT_TYPE_MESSAGE;
    if (pp->pool_free.len < 1 || !hv_page_list_reserve(&pp->pool_used, 1))
        return HV_STATUS_INSUFFICIENT_MEMORY; /* every port costs a page of its owner's pool */
    struct hv_port_table *t = table_make(ps, pp->slot);
    if (!t || t->nr_ports >= HV_MAX_PORTS_PER_PARTITION ||
        !grow((void **)&t->ports, &t->cap_ports, t->nr_ports + 1, sizeof(*t->ports)))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    struct hv_port *port = calloc(1, sizeof(*port));
    if (!port)
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply */
    port->serial = ++ps->next_serial;
    port->id = in.port_id;
    port->owner_slot = pp->slot;
    port->connection_partition = cp->id;
    port->type = pi->port_type;
    port->target_sint = pi->target_sint;
    port->target_vp = pi->target_vp;
    port->base_flag = message ? 0 : pi->base_flag_number;
    port->flag_count = message ? 0 : pi->flag_count;
    port->buf_pfn = hv_pool_take(c->h, pp);
    uint32_t i = port_index(t, in.port_id);
    memmove(t->ports + i + 1, t->ports + i, (size_t)(t->nr_ports - i) * sizeof(*t->ports));
    t->ports[i] = port;
    t->nr_ports++;
    ps->nr_ports++;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_connect_port(struct hv_call *c)
{
    struct hv_port_space *ps = &c->h->ports;
    struct hv_in_connect_port in;
    memcpy(&in, c->in, sizeof(in));
    const struct hv_connection_info *ci = &in.connection_info;
    if (in.connection_vtl || in.rsvdz[0] || in.rsvdz[1] || in.rsvdz[2] || in.rsvdz2 ||
        ci->reserved || ci->monitor_address || ci->rsvdz[0] || ci->rsvdz[1])
        return HV_STATUS_INVALID_PARAMETER;
    if (in.proximity_domain_info)
        return HV_STATUS_INVALID_PROXIMITY_DOMAIN_INFO;
    struct hv_partition *cp = hv_call_target(c, in.connection_partition, true);
    struct hv_partition *pp = hv_call_target(c, in.port_partition, true);
    if (!cp || !pp)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (cp->state != HV_PARTITION_INITIALIZED || pp->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    if ((in.connection_id & ~HV_PORT_ID_MASK) || find_conn(ps, cp->slot, in.connection_id))
        return HV_STATUS_INVALID_CONNECTION_ID;
    struct hv_port *port = find_port(ps, pp->slot, in.port_id);
    if (!port)
        return HV_STATUS_INVALID_PORT_ID;
    if (port->connection_partition != cp->id)
        return HV_STATUS_ACCESS_DENIED; /* the port was made for another connection partition */
    if (ci->port_type != port->type)
        return HV_STATUS_INVALID_PARAMETER;
    if (cp->pool_free.len < 1 || !hv_page_list_reserve(&cp->pool_used, 1))
        return HV_STATUS_INSUFFICIENT_MEMORY; /* a connection costs a page of the sender's pool */
    struct hv_port_table *t = table_make(ps, cp->slot);
    if (!t || t->nr_conns >= HV_MAX_CONNECTIONS_PER_PARTITION ||
        !grow((void **)&t->conns, &t->cap_conns, t->nr_conns + 1, sizeof(*t->conns)))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply */
    uint32_t i = conn_index(t, in.connection_id);
    memmove(t->conns + i + 1, t->conns + i, (size_t)(t->nr_conns - i) * sizeof(*t->conns));
    t->conns[i] = (struct hv_connection){ in.connection_id, port->type, port, hv_pool_take(c->h, cp) };
    t->nr_conns++;
    port->connections++;
    ps->nr_connections++;
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_delete_port(struct hv_call *c)
{
    struct hv_in_delete_port in;
    memcpy(&in, c->in, sizeof(in));
    if (in.padding)
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_partition *pp = hv_call_target(c, in.port_partition, true);
    if (!pp)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (pp->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    struct hv_port *port = find_port(&c->h->ports, pp->slot, in.port_id);
    if (!port)
        return HV_STATUS_INVALID_PORT_ID;
    /* apply */
    port_destroy(c->h, pp, port);
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_disconnect_port(struct hv_call *c)
{
    struct hv_in_disconnect_port in;
    memcpy(&in, c->in, sizeof(in));
    if (in.padding)
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_partition *cp = hv_call_target(c, in.connection_partition, true);
    if (!cp)
        return HV_STATUS_INVALID_PARTITION_ID;
    if (cp->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PARTITION_STATE;
    struct hv_connection *conn = find_conn(&c->h->ports, cp->slot, in.connection_id);
    if (!conn)
        return HV_STATUS_INVALID_CONNECTION_ID;
    /* apply */
    conn_remove(c->h, cp, conn);
    return HV_STATUS_SUCCESS;
}

/* ---- PostMessage and SignalEvent ---------------------------------------------------------------- */

/* The caller's connection `id` of `type`, its port, and the port's target VP. */
static uint16_t resolve(struct hv_call *c, uint32_t id, uint32_t type, struct hv_port **port,
                        struct hv_partition **pp, struct hv_vp **vp)
{
    const struct hv_connection *conn = find_conn(&c->h->ports, c->caller->slot, id);
    if (!conn || conn->type != type)
        return HV_STATUS_INVALID_CONNECTION_ID;
    if (!conn->port)
        return HV_STATUS_INVALID_PORT_ID;
    *port = conn->port;
    *pp = c->h->parts[conn->port->owner_slot];
    /* A finalized partition never runs again: its ports answer as a deleted one would, which
     * tells the sender no more than the DeletePartition that follows will. */
    if ((*pp)->state != HV_PARTITION_INITIALIZED)
        return HV_STATUS_INVALID_PORT_ID;
    *vp = (*pp)->vps[conn->port->target_vp];
    return *vp ? HV_STATUS_SUCCESS : HV_STATUS_INVALID_VP_INDEX; /* the VP was deleted since */
}

uint16_t hv_call_post_message(struct hv_call *c)
{
    struct hv_in_post_message in;
    memcpy(&in, c->in, sizeof(in));
    if (in.rsvdz || in.message_type == HV_MESSAGE_TYPE_NONE ||
        (in.message_type & HV_MESSAGE_TYPE_HYPERVISOR_MASK) || in.payload_size > HV_MESSAGE_PAYLOAD_MAX)
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_port *port;
    struct hv_partition *pp;
    struct hv_vp *vp;
    uint16_t st = resolve(c, in.connection_id, HV_PORT_TYPE_MESSAGE, &port, &pp, &vp);
    if (st != HV_STATUS_SUCCESS)
        return st;
    st = hv_synic_check_target(c->h, pp, vp, port->target_sint, false);
    if (st != HV_STATUS_SUCCESS)
        return st;
    uint32_t used = hv_synic_port_buffers(&vp->synic, port->target_sint, port->serial);
    if (used == (1u << HV_PORT_MESSAGE_BUFFERS) - 1)
        return HV_STATUS_INSUFFICIENT_BUFFERS;
    if (!hv_synic_queue_reserve(&vp->synic, port->target_sint))
        return HV_STATUS_INSUFFICIENT_MEMORY;
    /* apply: the message goes into the port's lowest free buffer, then into the queue */
    uint32_t buf = (uint32_t)__builtin_ctz(~used);
    struct hv_message msg;
    memset(&msg, 0, sizeof(msg));
    msg.header.message_type = in.message_type;
    msg.header.payload_size = (uint8_t)in.payload_size;
    msg.header.origination_id = port->id;
    memcpy(msg.payload, in.payload, in.payload_size);
    memcpy(hv_spa_page(c->h, port->buf_pfn) + (size_t)buf * HV_MESSAGE_SIZE, &msg, sizeof(msg));
    hv_page_mark_dirty(c->h, port->buf_pfn);
    struct hv_digest tag;
    hv_digest_init(&tag);
    for (size_t i = 0; i < sizeof(msg); i += 8)
        hv_digest_u64(&tag, hv_load64((const uint8_t *)&msg + i));
    struct hv_queued_msg m = { .kind = HV_MSG_PORT, .sender_slot = c->caller->slot, .port_serial = port->serial,
                               .buf_pfn = port->buf_pfn, .buf = buf, .tag = tag.a ^ tag.b };
    hv_synic_enqueue(c->h, pp, vp, port->target_sint, &m);
    return HV_STATUS_SUCCESS;
}

uint16_t hv_call_signal_event(struct hv_call *c)
{
    struct hv_in_signal_event in;
    memcpy(&in, c->in, sizeof(in));
    if (in.rsvdz)
        return HV_STATUS_INVALID_PARAMETER;
    struct hv_port *port;
    struct hv_partition *pp;
    struct hv_vp *vp;
    uint16_t st = resolve(c, in.connection_id, HV_PORT_TYPE_EVENT, &port, &pp, &vp);
    if (st != HV_STATUS_SUCCESS)
        return st;
    if (in.flag_number >= port->flag_count)
        return HV_STATUS_INVALID_PARAMETER;
    st = hv_synic_check_target(c->h, pp, vp, port->target_sint, true);
    if (st != HV_STATUS_SUCCESS)
        return st;
    /* apply */
    hv_synic_signal(c->h, pp, vp, port->target_sint, port->base_flag + in.flag_number);
    return HV_STATUS_SUCCESS;
}

/* ---- introspection -------------------------------------------------------------------------------- */

int32_t hv_port_undelivered(struct hv_host *h, uint64_t partition_id, uint32_t port_id)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    struct hv_port *port = p ? find_port(&h->ports, p->slot, port_id) : NULL;
    if (!port)
        return -1;
    struct hv_vp *vp = p->vps[port->target_vp];
    return vp ? __builtin_popcount(hv_synic_port_buffers(&vp->synic, port->target_sint, port->serial)) : 0;
}

int hv_port_counts(struct hv_host *h, uint64_t partition_id, uint32_t *ports, uint32_t *connections)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    if (!p)
        return -1;
    const struct hv_port_table *t = table(&h->ports, p->slot);
    *ports = t ? t->nr_ports : 0;
    *connections = t ? t->nr_conns : 0;
    return 0;
}

int hv_connection_target(struct hv_host *h, uint64_t partition_id, uint32_t connection_id,
                         uint64_t *port_partition_id, uint32_t *port_id)
{
    struct hv_partition *p = hv_partition_by_id(h, partition_id);
    const struct hv_connection *conn = p ? find_conn(&h->ports, p->slot, connection_id) : NULL;
    if (!conn)
        return -1;
    if (!conn->port)
        return 0;
    *port_partition_id = h->parts[conn->port->owner_slot]->id;
    *port_id = conn->port->id;
    return 1;
}
