/* netplane.c: the network data plane — netvsc -> vswitch -> netvsc forwarding of data frames in
 * one crossing per batch (the rules, and who owns what, are in netplane.h).
 *
 * The reference is Python: drivers/network/vsp.py (NetVsp._request, _rndis_packet, _data,
 * _completion, _from_switch, _indicate, _reply) and drivers/network/vswitch.py
 * (VirtualSwitch._ingress, _learn, _lookup, _expire). Each check here is one of theirs, in the
 * same order, with the same arithmetic (lengths are compared as 64-bit values, so no sum wraps
 * where Python's integers would not). Where the reference would refuse, drop, flood, queue or
 * capture, the C path stops before the packet and leaves it to Python; it never refuses
 * anything itself. The packet that stops the batch has had no effect: every decision about it
 * is taken before the first store. Guest memory (the send buffer, the batch's records) is read
 * once per field into locals; the frame itself is copied once, into the receiver's section.
 */
#include <stdlib.h>
#include <string.h>

#include "le.h"
#include "netplane.h"
#include "ring.h"

/* Wire constants (drivers/network/protocol.py). */
#define PKT_DATA_INBAND 6u
#define PKT_XFER_PAGES 7u
#define PKT_COMP 11u
#define NVSP_SEND_RNDIS_PKT 107u
#define NVSP_SEND_RNDIS_PKT_COMPLETE 108u
#define NVSP_MESSAGE_SIZE 40u
#define NVSP_SUCCESS 1u
#define NO_SECTION 0xFFFFFFFFu
#define CHANNEL_DATA 0u
#define RNDIS_PACKET 1u
#define RNDIS_PACKET_HEADER 44u /* type, length, rndis_packet (36) */
#define RNDIS_PACKET_BODY 36u
#define FILTER_DIRECTED 0x01u
#define FILTER_MULTICAST 0x02u
#define FILTER_ALL_MULTICAST 0x04u
#define FILTER_BROADCAST 0x08u
#define FILTER_PROMISCUOUS 0x20u
#define ETH_HEADER 14u
#define ETH_TAG 4u
#define MAX_TRANSFER_ID (1ull << 63)

static uint64_t mac48(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 6; i++)
        v = v << 8 | p[i];
    return v;
}

/* ---- the MAC table ------------------------------------------------------------------------ */

static uint64_t mac_key(uint32_t vlan, uint64_t mac) { return 1ull << 63 | (uint64_t)vlan << 48 | mac; }

static uint32_t slot_of(uint64_t key, uint32_t cap)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (uint32_t)key & (cap - 1);
}

static struct hv_np_mac *mac_find(const struct hv_np_switch *sw, uint64_t key)
{
    for (uint32_t i = slot_of(key, sw->mac_cap);; i = (i + 1) & (sw->mac_cap - 1)) {
        struct hv_np_mac *e = &sw->macs[i];
        if (e->key == key)
            return e;
        if (e->key == 0)
            return NULL;
    }
}

/* Delete by backward shift, so that probing never needs tombstones. */
static void mac_delete(struct hv_np_switch *sw, struct hv_np_mac *e)
{
    uint32_t mask = sw->mac_cap - 1, hole = (uint32_t)(e - sw->macs);
    for (uint32_t i = (hole + 1) & mask; sw->macs[i].key; i = (i + 1) & mask) {
        uint32_t home = slot_of(sw->macs[i].key, sw->mac_cap);
        /* Move entry i into the hole if its home is not in (hole, i] (cyclically). */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            sw->macs[hole] = sw->macs[i];
            hole = i;
        }
    }
    sw->macs[hole].key = 0;
    sw->mac_count--;
}

static int mac_insert(struct hv_np_switch *sw, uint64_t key, int32_t port, uint64_t seen)
{
    if (2 * (sw->mac_count + 1) > sw->mac_cap) {
        uint32_t cap = sw->mac_cap * 2;
        struct hv_np_mac *old = sw->macs, *macs = calloc(cap, sizeof *macs);
        if (macs == NULL)
            return -1;
        uint32_t old_cap = sw->mac_cap;
        sw->macs = macs;
        sw->mac_cap = cap;
        for (uint32_t i = 0; i < old_cap; i++)
            if (old[i].key) {
                uint32_t j = slot_of(old[i].key, cap);
                while (macs[j].key)
                    j = (j + 1) & (cap - 1);
                macs[j] = old[i];
            }
        free(old);
    }
    uint32_t j = slot_of(key, sw->mac_cap);
    while (sw->macs[j].key)
        j = (j + 1) & (sw->mac_cap - 1);
    sw->macs[j] = (struct hv_np_mac){key, seen, port};
    sw->mac_count++;
    return 0;
}

static int port_valid(const struct hv_np_switch *sw, int32_t port)
{
    return port >= 0 && (uint32_t)port < sw->nports && sw->ports[port].in_use;
}

struct hv_np_switch *hv_np_switch_new(uint64_t ageing_ns, uint64_t window_ns, uint32_t max_frames_per_window,
                                      uint32_t max_macs_per_port, uint32_t mtu)
{
    struct hv_np_switch *sw = calloc(1, sizeof *sw);
    if (sw == NULL)
        return NULL;
    sw->mac_cap = 64;
    sw->macs = calloc(sw->mac_cap, sizeof *sw->macs);
    if (sw->macs == NULL) {
        free(sw);
        return NULL;
    }
    sw->ageing_ns = ageing_ns;
    sw->window_ns = window_ns;
    sw->max_frames_per_window = max_frames_per_window;
    sw->max_macs_per_port = max_macs_per_port;
    sw->mtu = mtu;
    return sw;
}

void hv_np_switch_free(struct hv_np_switch *sw)
{
    if (sw == NULL)
        return;
    free(sw->macs);
    free(sw->ports);
    free(sw);
}

int32_t hv_np_port_add(struct hv_np_switch *sw)
{
    uint32_t i = 0;
    while (i < sw->nports && sw->ports[i].in_use)
        i++;
    if (i == sw->nports) {
        if (sw->nports >= INT32_MAX / 2)
            return HV_NP_NO_PORT;
        uint32_t n = sw->nports ? 2 * sw->nports : 8;
        struct hv_np_port *ports = realloc(sw->ports, n * sizeof *ports);
        if (ports == NULL)
            return HV_NP_NO_PORT;
        memset(ports + sw->nports, 0, (n - sw->nports) * sizeof *ports);
        sw->ports = ports;
        sw->nports = n;
    }
    sw->ports[i] = (struct hv_np_port){.in_use = 1, .vlan = HV_NP_TRUNK, .seq = ++sw->next_seq};
    return (int32_t)i;
}

void hv_np_port_remove(struct hv_np_switch *sw, int32_t port)
{
    if (!port_valid(sw, port))
        return;
    hv_np_forget_port(sw, port);
    sw->ports[port] = (struct hv_np_port){.vlan = HV_NP_TRUNK};
}

struct hv_np_port *hv_np_port_at(struct hv_np_switch *sw, int32_t port)
{
    return port_valid(sw, port) ? &sw->ports[port] : NULL;
}

/* Forget aged entries of one port (or of all, port < 0); the port's next_expiry becomes the
 * time its oldest kept entry ages (vswitch.py _expire). */
void hv_np_expire(struct hv_np_switch *sw, int32_t port, uint64_t now)
{
    uint64_t oldest = now;
    for (uint32_t i = 0; i < sw->mac_cap;) {
        struct hv_np_mac *e = &sw->macs[i];
        if (e->key && (port < 0 || e->port == port)) {
            if (now - e->seen >= sw->ageing_ns) {
                sw->ports[e->port].learned--;
                mac_delete(sw, e);
                continue;   /* slot i now holds a shifted entry (or is empty): look again */
            }
            if (e->seen < oldest)
                oldest = e->seen;
        }
        i++;
    }
    if (port_valid(sw, port))
        sw->ports[port].next_expiry = oldest + sw->ageing_ns;
}

/* N.B. a deletion during these scans shifts later entries of the probe run back into the hole
 * (which is why a deleted slot is looked at again); near the end of the table that can pull an
 * entry from the start, already looked at, back to the end: it is looked at twice, which is
 * harmless, and no entry not yet looked at ever moves before the scan position. */

void hv_np_forget_port(struct hv_np_switch *sw, int32_t port)
{
    if (!port_valid(sw, port))
        return;
    for (uint32_t i = 0; i < sw->mac_cap;) {
        struct hv_np_mac *e = &sw->macs[i];
        if (e->key && e->port == port) {
            mac_delete(sw, e);
            continue;
        }
        i++;
    }
    sw->ports[port].learned = 0;
}

uint32_t hv_np_learn(struct hv_np_switch *sw, uint32_t vlan, uint64_t mac, int32_t port, uint64_t now)
{
    if (!port_valid(sw, port))
        return HV_NP_REFUSED;
    uint32_t bits = 0;
    uint64_t key = mac_key(vlan, mac);
    struct hv_np_mac *e = mac_find(sw, key);
    if (e != NULL) {
        if (e->port == port) {
            e->seen = now;
            return 0;
        }
        if (now - e->seen < sw->ageing_ns)
            bits |= HV_NP_MOVED;
        sw->ports[e->port].learned--;
        mac_delete(sw, e);
    }
    struct hv_np_port *p = &sw->ports[port];
    if (p->learned >= sw->max_macs_per_port) {
        /* Scan for aged entries only when one can have aged since the last scan. */
        if (now >= p->next_expiry)
            hv_np_expire(sw, port, now);
        if (p->learned >= sw->max_macs_per_port)
            return bits | HV_NP_REFUSED;
    }
    if (mac_insert(sw, key, port, now) != 0)
        return bits | HV_NP_REFUSED;
    p->learned++;
    return bits;
}

int32_t hv_np_lookup(struct hv_np_switch *sw, uint32_t vlan, uint64_t mac, uint64_t now)
{
    struct hv_np_mac *e = mac_find(sw, mac_key(vlan, mac));
    if (e == NULL)
        return HV_NP_NO_PORT;
    if (now - e->seen >= sw->ageing_ns) {
        sw->ports[e->port].learned--;
        mac_delete(sw, e);
        return HV_NP_NO_PORT;
    }
    return e->port;
}

uint32_t hv_np_mac_entries(const struct hv_np_switch *sw, struct hv_np_mac_entry *out, uint32_t cap)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < sw->mac_cap; i++) {
        const struct hv_np_mac *e = &sw->macs[i];
        if (!e->key)
            continue;
        if (n < cap)
            out[n] = (struct hv_np_mac_entry){(uint32_t)(e->key >> 48) & 0xFFF, e->port,
                                              e->key & 0xFFFFFFFFFFFFull, e->seen};
        n++;
    }
    return n;
}

/* ---- an adapter's receive sections ---------------------------------------------------------- */

struct hv_np_adapter *hv_np_adapter_new(void)
{
    struct hv_np_adapter *a = calloc(1, sizeof *a);
    if (a != NULL) {
        a->port = HV_NP_NO_PORT;
        a->w = HV_NP_ADOPT;
        a->next_transfer = 1;
    }
    return a;
}

void hv_np_adapter_free(struct hv_np_adapter *a)
{
    if (a == NULL)
        return;
    free(a->free_q);
    free(a->ift_key);
    free(a->ift_val);
    free(a);
}

/* All `count` sections free in order, nothing in flight (count 0: no receive buffer). */
int hv_np_sections_reset(struct hv_np_adapter *a, uint32_t count)
{
    uint32_t cap = 16;
    while (cap < 2 * count)
        cap *= 2;
    uint32_t *q = malloc((count ? count : 1) * sizeof *q);
    uint64_t *keys = calloc(cap, sizeof *keys);
    uint32_t *vals = malloc(cap * sizeof *vals);
    if (q == NULL || keys == NULL || vals == NULL) {
        free(q), free(keys), free(vals);
        return -1;
    }
    for (uint32_t i = 0; i < count; i++)
        q[i] = i;
    free(a->free_q), free(a->ift_key), free(a->ift_val);
    a->free_q = q;
    a->free_head = 0;
    a->free_len = count;
    a->free_cap = count ? count : 1;
    a->ift_key = keys;
    a->ift_val = vals;
    a->ift_cap = cap;
    a->ift_len = 0;
    return 0;
}

int64_t hv_np_take(struct hv_np_adapter *a)
{
    if (a->free_len == 0)
        return -1;
    uint32_t s = a->free_q[a->free_head];
    a->free_head = (a->free_head + 1) % a->free_cap;
    a->free_len--;
    return s;
}

int hv_np_put_front(struct hv_np_adapter *a, uint32_t section)
{
    if (a->free_q == NULL || a->free_len == a->free_cap)
        return -1;
    a->free_head = (a->free_head + a->free_cap - 1) % a->free_cap;
    a->free_q[a->free_head] = section;
    a->free_len++;
    return 0;
}

int hv_np_put_back(struct hv_np_adapter *a, uint32_t section)
{
    if (a->free_q == NULL || a->free_len == a->free_cap)
        return -1;
    a->free_q[(a->free_head + a->free_len) % a->free_cap] = section;
    a->free_len++;
    return 0;
}

static uint32_t *ift_find(struct hv_np_adapter *a, uint64_t tid, uint32_t *slot)
{
    if (a->ift_key == NULL)
        return NULL;
    for (uint32_t i = slot_of(tid, a->ift_cap);; i = (i + 1) & (a->ift_cap - 1)) {
        if (a->ift_key[i] == tid) {
            *slot = i;
            return &a->ift_val[i];
        }
        if (a->ift_key[i] == 0)
            return NULL;
    }
}

/* A new transfer of `section`: its trans_id (never 0), recorded in flight. */
uint64_t hv_np_begin(struct hv_np_adapter *a, uint32_t section)
{
    uint64_t tid = a->next_transfer;
    a->next_transfer = tid < MAX_TRANSFER_ID ? tid + 1 : 1;
    if (a->ift_key == NULL || 2 * (a->ift_len + 1) > a->ift_cap)
        return tid;   /* cannot happen: at most free_cap sections are ever in flight */
    uint32_t slot;
    uint32_t *v = ift_find(a, tid, &slot);
    if (v != NULL) {
        *v = section;
        return tid;
    }
    uint32_t i = slot_of(tid, a->ift_cap);
    while (a->ift_key[i])
        i = (i + 1) & (a->ift_cap - 1);
    a->ift_key[i] = tid;
    a->ift_val[i] = section;
    a->ift_len++;
    return tid;
}

/* The section of transfer `trans_id`, no longer in flight; -1 if none is. */
int64_t hv_np_complete(struct hv_np_adapter *a, uint64_t trans_id)
{
    uint32_t hole;
    if (trans_id == 0 || ift_find(a, trans_id, &hole) == NULL)
        return -1;
    int64_t section = a->ift_val[hole];
    uint32_t mask = a->ift_cap - 1;
    for (uint32_t i = (hole + 1) & mask; a->ift_key[i]; i = (i + 1) & mask) {
        uint32_t home = slot_of(a->ift_key[i], a->ift_cap);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            a->ift_key[hole] = a->ift_key[i];
            a->ift_val[hole] = a->ift_val[i];
            hole = i;
        }
    }
    a->ift_key[hole] = 0;
    a->ift_len--;
    return section;
}

uint32_t hv_np_free_list(const struct hv_np_adapter *a, uint32_t *out, uint32_t cap)
{
    for (uint32_t i = 0; i < a->free_len && i < cap; i++)
        out[i] = a->free_q[(a->free_head + i) % a->free_cap];
    return a->free_len;
}

uint32_t hv_np_in_flight(const struct hv_np_adapter *a, uint64_t *trans_ids, uint32_t *sections, uint32_t cap)
{
    uint32_t n = 0;
    for (uint32_t i = 0; a->ift_key != NULL && i < a->ift_cap; i++)
        if (a->ift_key[i]) {
            if (n < cap)
                trans_ids[n] = a->ift_key[i], sections[n] = a->ift_val[i];
            n++;
        }
    return n;
}

/* ---- forwarding ----------------------------------------------------------------------------- */

/* The ring's writer state is one the Python writer would also write to (not broken, its
 * write_index as last published): otherwise Python must take this write (and raise). */
static int ring_writable(const struct hv_np_adapter *a)
{
    if (a->ring == NULL || a->broken || a->quiesced)
        return 0;
    uint32_t w = le32(a->ring + HV_RING_OFF_WRITE_INDEX);
    return a->w == HV_NP_ADOPT || w == a->w;
}

/* Append one packet to an adapter's ring: 1 written (signal in *signal), 0 full, < 0 corrupt. */
static int ring_write(struct hv_np_adapter *a, const uint8_t *header, uint32_t hlen, const uint8_t *payload,
                      uint32_t len, uint16_t type, uint16_t flags, uint64_t tid, int *signal)
{
    struct hv_ring_result r;
    int rc = hv_ring_write_packet(a->ring, a->ring_len, header, hlen, payload, len, type, flags, tid, &r);
    if (rc == 1) {
        a->w = r.index;
        a->wrote = 1;
        *signal = (int)r.signal;
    }
    return rc;
}

static int add_signal(struct hv_np_batch *b, int32_t port)
{
    if (b->nsignals == HV_NP_MAX_SIGNALS)
        return -1;
    b->signals[b->nsignals++] = port;
    return 0;
}

/* What a receiving adapter does with a frame (vsp.py _from_switch). */
enum outcome { STOP, DELIVERED, FILTERED, NO_BUFFER, RING_FULL };

static const uint8_t BROADCAST[6] = {0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};

static int passes_filter(const struct hv_np_adapter *r, const uint8_t *dst)
{
    uint32_t wanted = r->packet_filter;
    if (wanted & FILTER_PROMISCUOUS)
        return 1;
    if (memcmp(dst, r->mac, 6) == 0)
        return (wanted & FILTER_DIRECTED) != 0;
    if (memcmp(dst, BROADCAST, 6) == 0)
        return (wanted & FILTER_BROADCAST) != 0;
    if (dst[0] & 1)
        return (wanted & (FILTER_MULTICAST | FILTER_ALL_MULTICAST)) != 0;
    return 0;
}

/* The indices as hv_ring_write_packet checks them: valid ones mean it writes or finds no room. */
static int ring_indices_valid(const struct hv_np_adapter *a)
{
    size_t dsize = a->ring_len - HV_RING_CONTROL_SIZE;
    if (a->ring_len <= HV_RING_CONTROL_SIZE || dsize < HV_RING_MIN_DATA_SIZE || dsize > HV_RING_MAX_DATA_SIZE
        || dsize % HV_RING_ALIGN)
        return 0;
    uint32_t w = le32(a->ring + HV_RING_OFF_WRITE_INDEX), r = le32(a->ring + HV_RING_OFF_READ_INDEX);
    return w < dsize && r < dsize && w % HV_RING_ALIGN == 0 && r % HV_RING_ALIGN == 0;
}

/* A delivery decided, nothing changed yet: the outcome and, for DELIVERED (a write, which may
 * still find the ring full), the section it goes to. */
struct plan {
    enum outcome out;
    uint32_t section;
    uint8_t *at;         /* the section's first byte */
    uint32_t msg_len;    /* the RNDIS message's bytes there */
};

static struct plan plan_delivery(const struct hv_np_adapter *r, const uint8_t *frame, uint32_t len,
                                 const uint8_t *dst)
{
    struct plan p = {STOP, 0, NULL, 0};
    if (r->quiesced || !r->rndis_ready || r->recv == NULL)
        return p;   /* rx_vm_saved / rx_not_ready: Python's */
    if (!passes_filter(r, dst)) {
        p.out = FILTERED;
        return p;
    }
    if (r->free_len == 0) {
        p.out = NO_BUFFER;
        return p;
    }
    if (!ring_writable(r) || !ring_indices_valid(r))
        return p;   /* Python raises RingCorrupt (rx_ring_broken) */
    p.section = r->free_q[r->free_head];
    p.msg_len = RNDIS_PACKET_HEADER + len;
    if (p.section >= r->recv_count || p.msg_len > r->recv_size)
        return p;   /* Python's slice assignment would say why */
    p.at = r->recv + (uint64_t)p.section * r->recv_size;
    if (p.at < frame + len && frame < p.at + p.msg_len)
        return p;   /* the frame lies in the section it would go to: Python copies it first */
    p.out = DELIVERED;
    return p;
}

/* Carry out a DELIVERED plan: the RNDIS message into the section, the transfer-page packet into
 * the ring. DELIVERED, or RING_FULL (the section stays free; the trans_id is used up). */
static enum outcome deliver(struct hv_np_adapter *r, const struct plan *p, const uint8_t *frame, uint32_t len,
                            int *signal)
{
    uint8_t *m = p->at;
    uint64_t start = (uint64_t)p->section * r->recv_size;
    memset(m, 0, RNDIS_PACKET_HEADER);
    put32(m, RNDIS_PACKET);
    put32(m + 4, p->msg_len);
    put32(m + 8, RNDIS_PACKET_BODY);   /* data offset, from the byte after type and length */
    put32(m + 12, len);
    memcpy(m + RNDIS_PACKET_HEADER, frame, len);
    /* The transfer-page header (one range) and SEND_RNDIS_PKT on the data channel. */
    uint8_t header[16] = {0}, nvsp[NVSP_MESSAGE_SIZE] = {0};
    header[0] = (uint8_t)r->recv_id, header[1] = (uint8_t)(r->recv_id >> 8);
    put32(header + 4, 1);
    put32(header + 8, p->msg_len);
    put32(header + 12, (uint32_t)start);
    put32(nvsp, NVSP_SEND_RNDIS_PKT);
    put32(nvsp + 4, CHANNEL_DATA);
    put32(nvsp + 8, NO_SECTION);
    uint64_t tid = r->next_transfer;
    int rc = ring_write(r, header, sizeof header, nvsp, sizeof nvsp, PKT_XFER_PAGES,
                        HV_RING_FLAG_COMPLETION_REQUESTED, tid, signal);
    hv_np_take(r);
    hv_np_begin(r, p->section);
    if (rc != 1) {   /* 0: no room (< 0 cannot follow a plan: it checked the indices) */
        hv_np_complete(r, tid);
        hv_np_put_front(r, p->section);
        return RING_FULL;
    }
    return DELIVERED;
}

static int overlaps(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return a < b + blen && b < a + alen;
}

/* The ports a flood goes to, in the order they were added (vswitch.py _members_of), each a
 * netvsp the C path delivers to; -1 if any port that may carry the VLAN is not one. */
static int flood_members(const struct hv_np_switch *sw, int32_t self, uint32_t vlan, int32_t *out, uint32_t *n)
{
    *n = 0;
    for (uint32_t i = 0; i < sw->nports; i++) {
        const struct hv_np_port *p = &sw->ports[i];
        if (!p->in_use || (int32_t)i == self)
            continue;
        if (p->vlan == HV_NP_TRUNK)
            return -1;   /* a trunk may carry it, tagged: Python's */
        if (p->vlan != (int32_t)vlan)
            continue;
        if (!p->deliverable || p->adapter == NULL || *n == HV_NP_MAX_FLOOD)
            return -1;
        uint32_t j = (*n)++;   /* insertion by seq: a handful of ports */
        while (j > 0 && sw->ports[out[j - 1]].seq > p->seq) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = (int32_t)i;
    }
    return 0;
}

static int touch(struct hv_np_switch *sw, struct hv_np_batch *b, int32_t port)
{
    if (sw->ports[port].touched)
        return 0;
    if (b->ntouched == HV_NP_MAX_TOUCHED)
        return -1;
    sw->ports[port].touched = 1;
    b->touched[b->ntouched++] = port;
    return 0;
}

/* One data packet's frame: where it is, or 0 if the C path does not take this packet. */
static int data_frame(const struct hv_np_adapter *a, const uint8_t *payload, uint32_t plen, const uint8_t **frame,
                      uint32_t *flen)
{
    if (plen < 16 || le32(payload) != NVSP_SEND_RNDIS_PKT || !a->version_ok)
        return 0;
    uint32_t channel = le32(payload + 4), index = le32(payload + 8), size = le32(payload + 12);
    if (channel != CHANNEL_DATA)
        return 0;
    const uint8_t *data;
    uint64_t dlen;
    if (index == NO_SECTION) {
        if (plen < NVSP_MESSAGE_SIZE)
            return 0;   /* no in-band bytes: Python refuses it */
        data = payload + NVSP_MESSAGE_SIZE, dlen = plen - NVSP_MESSAGE_SIZE;
    } else {
        if (a->send == NULL || index >= a->send_count || size == 0 || size > a->send_size)
            return 0;
        data = a->send + (uint64_t)index * a->send_size, dlen = size;
    }
    /* The RNDIS data message: header fields read once into locals. */
    uint8_t head[RNDIS_PACKET_HEADER];
    if (dlen < RNDIS_PACKET_HEADER)
        return 0;
    memcpy(head, data, RNDIS_PACKET_HEADER);
    if (le32(head) != RNDIS_PACKET)
        return 0;
    uint64_t length = le32(head + 4);
    if (length < RNDIS_PACKET_HEADER || length > dlen)
        return 0;
    uint64_t body = length - 8;
    uint64_t data_offset = le32(head + 8), data_len = le32(head + 12);
    uint64_t oob_offset = le32(head + 16), oob_len = le32(head + 20);
    uint64_t ppi_offset = le32(head + 28), ppi_len = le32(head + 32);
    if (data_len == 0 || data_offset < RNDIS_PACKET_BODY || data_offset + data_len > body)
        return 0;
    if (oob_len && (oob_offset < RNDIS_PACKET_BODY || oob_offset + oob_len > body))
        return 0;
    if (ppi_len && (ppi_offset < RNDIS_PACKET_BODY || ppi_offset + ppi_len > body))
        return 0;
    if (data_len > ETH_HEADER + ETH_TAG + a->mtu || !a->rndis_ready || a->port < 0)
        return 0;
    *frame = data + 8 + data_offset;
    *flen = (uint32_t)data_len;
    return 1;
}

int hv_np_forward(struct hv_np_switch *sw, struct hv_np_adapter *a, const uint8_t *records, size_t len,
                  uint32_t offset, uint32_t max_packets, struct hv_np_batch *b)
{
    b->handled = b->completion_pending = b->ntouched = b->nsignals = 0;
    b->offset = offset;
    b->rx_frames = b->rx_bytes = b->forwarded = b->filtered = b->mac_moves = b->learn_refused = 0;
    b->flooded = 0;
    b->tx_frames = b->tx_bytes = 0;
    b->cap_used = b->ncap = 0;
    if (b->capture && b->cap == NULL)
        return -1;
    if (sw == NULL || a == NULL || records == NULL || !port_valid(sw, a->port))
        return -1;
    struct hv_np_port *self = &sw->ports[a->port];
    if (self->vlan < 0 || self->adapter != a)
        return 0;
    uint32_t vlan = (uint32_t)self->vlan;
    uint64_t now = b->now;
    int stop = 0;
    while (!stop && b->handled < max_packets && (uint64_t)b->offset + HV_RING_DESC_SIZE <= len) {
        const uint8_t *rec = records + b->offset;
        uint16_t type = le16(rec), offset8 = le16(rec + 2), len8 = le16(rec + 4);
        uint64_t tid = le64(rec + 8);
        uint64_t end = (uint64_t)b->offset + (uint64_t)len8 * 8;
        if (offset8 < 2 || offset8 > len8 || end > len)
            return -1;
        const uint8_t *payload = rec + offset8 * 8u;
        uint32_t plen = (uint32_t)(len8 - offset8) * 8u;

        if (type == PKT_COMP) {
            /* The guest completes a receive transfer: its section is free again. */
            if (plen < 8 || le32(payload) != NVSP_SEND_RNDIS_PKT_COMPLETE)
                break;
            int64_t section = hv_np_complete(a, tid);
            if (section < 0)
                break;
            hv_np_put_back(a, (uint32_t)section);
            b->handled++, b->offset = (uint32_t)end;
            continue;
        }
        const uint8_t *frame;
        uint32_t flen;
        if (type != PKT_DATA_INBAND || !data_frame(a, payload, plen, &frame, &flen))
            break;

        /* The switch (vswitch.py _ingress) for an untagged frame from an access port. */
        uint64_t wstart = b->window_start;
        uint32_t wcount = b->window_count;
        if (now - wstart >= sw->window_ns)
            wstart = now, wcount = 0;
        if (wcount >= sw->max_frames_per_window || flen < ETH_HEADER || flen > ETH_HEADER + sw->mtu)
            break;
        uint8_t eth[ETH_HEADER];
        memcpy(eth, frame, ETH_HEADER);
        uint16_t ethertype = (uint16_t)(eth[12] << 8 | eth[13]);
        if (ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100)
            break;
        const uint8_t *dst = eth, *src = eth + 6;
        if (src[0] & 1 || memcmp(src, a->mac, 6) != 0 || mac48(src) == 0)
            break;   /* spoofed or malformed: Python drops it */
        /* Where it goes: nowhere (to its own port: filtered), one learned port, or the VLAN. */
        int32_t targets[HV_NP_MAX_FLOOD];
        uint32_t ntargets = 0;
        int flooded = 0, filtered = 0;
        if (memcmp(dst, src, 6) == 0) {
            filtered = 1;   /* learned from this very frame */
        } else if (dst[0] & 1) {
            flooded = 1;
        } else {
            struct hv_np_mac *e = mac_find(sw, mac_key(vlan, mac48(dst)));
            if (e != NULL && now - e->seen >= sw->ageing_ns)
                break;   /* aged: Python forgets it (then floods) */
            if (e == NULL) {
                flooded = 1;
            } else if (e->port == a->port) {
                filtered = 1;
            } else {
                struct hv_np_port *t = &sw->ports[e->port];
                if (t->vlan != (int32_t)vlan || !t->deliverable || t->adapter == NULL)
                    break;   /* not a netvsp on its VLAN: Python's */
                targets[ntargets++] = e->port;
            }
        }
        if (flooded && flood_members(sw, a->port, vlan, targets, &ntargets) != 0)
            break;
        if (b->nsignals + ntargets + 1 > HV_NP_MAX_SIGNALS)
            break;

        /* Every delivery is decided before anything changes: one that Python must make stops the
         * batch here. The writes of a flood must not touch each other's rings, sections or the
         * frame (a guest can alias its own buffers and rings): else Python writes them, one after
         * another, as the reference does. */
        struct plan plans[HV_NP_MAX_FLOOD];
        int stop_here = 0;
        for (uint32_t k = 0; k < ntargets && !stop_here; k++) {
            plans[k] = plan_delivery(sw->ports[targets[k]].adapter, frame, flen, dst);
            stop_here = plans[k].out == STOP || touch(sw, b, targets[k]) != 0;
        }
        for (uint32_t k = 0; k < ntargets && ntargets > 1 && !stop_here; k++) {
            const struct hv_np_adapter *rk = sw->ports[targets[k]].adapter;
            if (plans[k].out != DELIVERED)
                continue;
            stop_here = overlaps(rk->ring, rk->ring_len, plans[k].at, plans[k].msg_len);
            for (uint32_t j = 0; j < ntargets && !stop_here; j++) {
                const struct hv_np_adapter *rj = sw->ports[targets[j]].adapter;
                if (j == k || plans[j].out != DELIVERED)
                    continue;
                stop_here = overlaps(rk->ring, rk->ring_len, rj->ring, rj->ring_len)
                    || overlaps(rk->ring, rk->ring_len, plans[j].at, plans[j].msg_len)
                    || overlaps(plans[k].at, plans[k].msg_len, plans[j].at, plans[j].msg_len)
                    || overlaps(frame, flen, plans[j].at, plans[j].msg_len);
            }
        }
        if (stop_here)
            break;   /* (ports touched stay listed: their deltas are zero) */
        enum outcome outs[HV_NP_MAX_FLOOD];
        int signals[HV_NP_MAX_FLOOD];
        for (uint32_t k = 0; k < ntargets; k++) {
            signals[k] = 0;
            outs[k] = plans[k].out != DELIVERED ? plans[k].out
                : deliver(sw->ports[targets[k]].adapter, &plans[k], frame, flen, &signals[k]);
        }

        /* Committed: the sender's side of _ingress and _data, the receiver's of _from_switch. */
        b->window_start = wstart;
        b->window_count = wcount + 1;
        b->rx_frames++, b->rx_bytes += flen, b->forwarded++;
        if (b->capture) {   /* as the switch has it: untagged here, Python tags it for its VLAN */
            put32(b->cap + b->cap_used, flen);
            memcpy(b->cap + b->cap_used + 4, frame, flen);
            b->cap_used += 4 + flen;
            b->ncap++;
        }
        uint32_t learnt = hv_np_learn(sw, vlan, mac48(src), a->port, now);
        b->mac_moves += (learnt & HV_NP_MOVED) != 0;
        b->learn_refused += (learnt & HV_NP_REFUSED) != 0;
        b->filtered += (uint64_t)filtered;
        b->flooded += (uint64_t)flooded;
        for (uint32_t k = 0; k < ntargets; k++) {
            struct hv_np_port *t = &sw->ports[targets[k]];
            struct hv_np_adapter *r = t->adapter;
            if (signals[k])
                add_signal(b, targets[k]);
            if (outs[k] == NO_BUFFER || outs[k] == RING_FULL) {
                t->d_dropped_refused++;
                if (outs[k] == NO_BUFFER)
                    r->d_rx_no_buffer++;
                else
                    r->d_rx_ring_full++;
            } else {
                t->d_tx_frames++, t->d_tx_bytes += flen;
                if (outs[k] == FILTERED)
                    r->d_rx_filtered++;
                else
                    r->d_rx_frames++, r->d_rx_bytes += flen;
            }
        }
        b->tx_frames++, b->tx_bytes += flen;

        /* The completion (vsp.py _reply). One the ring does not take now is Python's to queue. */
        uint8_t done[NVSP_MESSAGE_SIZE] = {0};
        put32(done, NVSP_SEND_RNDIS_PKT_COMPLETE);
        put32(done + 4, NVSP_SUCCESS);
        int signal = 0;
        if (!ring_writable(a) || ring_write(a, NULL, 0, done, sizeof done, PKT_COMP, 0, tid, &signal) != 1) {
            b->completion_pending = 1, b->completion_tid = tid;
            stop = 1;
        } else if (signal) {
            add_signal(b, a->port);
        }
        b->handled++, b->offset = (uint32_t)end;
    }
    for (uint32_t i = 0; i < b->ntouched; i++)
        sw->ports[b->touched[i]].touched = 0;
    return (int)b->handled;
}
