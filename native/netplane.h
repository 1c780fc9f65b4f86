/* netplane.h: the network data plane in C — the per-frame path from one VM's netvsp through the
 * virtual switch into another VM's netvsp (drivers/network/vsp.py and vswitch.py are the
 * reference; drivers/network/netplane.py is the Python face).
 *
 * What lives here and who owns it:
 *  - a switch's MAC table ((VLAN, MAC) -> port, last seen) with its learning policy (ageing,
 *    moves, a bound per port) and, per port, the few facts forwarding needs (its access VLAN and
 *    the adapter behind it). Python keeps the configuration (it writes these fields) and every
 *    decision the C path does not take;
 *  - per netvsp adapter, its receive sections (free FIFO, transfers in flight by trans_id) and
 *    the facts the data path checks (NVSP/RNDIS state, buffers, the ring it writes);
 *  - hv_np_forward: a batch of packets the guest sent, as hv_ring_read_batch records, handled in
 *    order while each is a well-formed data frame (or a receive completion) whose whole path is
 *    one the C path takes. The first packet that is anything else stops the batch before any of
 *    its effects, and Python handles it (the reference code), so order is kept.
 *
 * Counters the C path moves are kept as deltas (in the batch record and in each touched port
 * and adapter) that Python folds into its own counters after the call. Signals are not sent
 * from here: the batch lists the ports whose rings must be signalled, in order, and Python
 * signals them (simulated time does not move inside a batch, so the hypercalls are the same).
 */
#ifndef HV_NETPLANE_H
#define HV_NETPLANE_H

#include <stddef.h>
#include <stdint.h>

#define HV_NP_NO_PORT   (-1)
#define HV_NP_TRUNK     (-1)       /* hv_np_port.vlan: not an access port (the C path leaves it) */
#define HV_NP_ADOPT     0xFFFFFFFFu /* hv_np_adapter.w: adopt the write_index found (first write) */
#define HV_NP_MAX_TOUCHED 32
#define HV_NP_MAX_SIGNALS 64
#define HV_NP_MAX_FLOOD 16   /* ports a flood may go to in C (more: Python floods it) */

/* hv_np_learn's result bits. */
#define HV_NP_MOVED   1u  /* a live entry moved from another port */
#define HV_NP_REFUSED 2u  /* not learned: the port owns max_macs_per_port entries */

struct hv_np_adapter;

/* One switch port as the C path sees it (Python writes vlan/adapter/deliverable). */
struct hv_np_port {
    int32_t in_use;
    int32_t vlan;                   /* access VLAN, or HV_NP_TRUNK */
    int32_t deliverable;            /* 1: frames for it may be delivered by C (a netvsp, no error) */
    uint32_t learned;               /* MAC entries pointing at this port */
    uint64_t next_expiry;           /* no entry of this port ages before this time */
    struct hv_np_adapter *adapter;  /* the netvsp behind it, or NULL */
    /* deltas since Python last folded them */
    uint64_t d_tx_frames, d_tx_bytes, d_dropped_refused;
    int32_t touched;                /* listed in the current batch's touched[] */
    uint64_t seq;                   /* when it was added: floods go to ports in this order */
};

struct hv_np_mac {
    uint64_t key;   /* 0: empty; else 1 << 63 | vlan << 48 | mac */
    uint64_t seen;
    int32_t port;
};

struct hv_np_switch {
    uint64_t ageing_ns;
    uint64_t window_ns;
    uint32_t max_frames_per_window;
    uint32_t max_macs_per_port;
    uint32_t mtu;
    uint32_t nports;                /* slots in ports[] */
    struct hv_np_port *ports;
    struct hv_np_mac *macs;         /* open addressing, linear probing, mac_cap a power of two */
    uint32_t mac_cap, mac_count;
    uint64_t next_seq;              /* the seq of the last port added */
};

struct hv_np_adapter {
    /* set by Python */
    uint8_t mac[6];
    uint8_t version_ok, rndis_ready;    /* NVSP version negotiated; RNDIS initialized */
    uint8_t quiesced, broken;           /* VM being saved; the outgoing ring raised RingCorrupt */
    uint8_t pad[6];
    uint32_t mtu;
    uint32_t packet_filter;
    int32_t port;                       /* its switch port's index, or HV_NP_NO_PORT */
    uint8_t *recv;                      /* receive buffer (NULL: none) */
    uint32_t recv_size, recv_count;     /* section size, sections */
    uint32_t recv_id;                   /* the transfer page set id */
    uint8_t *send;                      /* send buffer (NULL: none) */
    uint32_t send_size, send_count;
    uint8_t *ring;                      /* the host->guest ring (NULL: the C path never writes) */
    size_t ring_len;
    uint32_t w;                         /* write_index the ring's writer last published */
    /* receive sections: free FIFO and transfers in flight (trans_id -> section) */
    uint32_t *free_q;
    uint32_t free_head, free_len, free_cap;
    uint64_t *ift_key;                  /* 0: empty slot */
    uint32_t *ift_val;
    uint32_t ift_cap, ift_len;
    uint64_t next_transfer;
    /* deltas since Python last folded them */
    uint64_t d_rx_frames, d_rx_bytes, d_rx_filtered, d_rx_no_buffer, d_rx_ring_full;
    uint32_t wrote;                     /* C published a write_index (Python syncs its ring) */
};

/* One hv_np_forward call: inputs marked (in), the rest outputs. */
struct hv_np_batch {
    uint64_t now;                       /* (in) simulated ns */
    uint64_t window_start;              /* (in/out) the sender port's rate window */
    uint32_t window_count;
    uint32_t handled;                   /* packets handled */
    uint32_t offset;                    /* record offset of the first packet not handled */
    uint32_t completion_pending;        /* 1: the last handled packet's completion was not written */
    uint64_t completion_tid;
    uint64_t rx_frames, rx_bytes;       /* sender port */
    uint64_t forwarded, filtered, mac_moves, learn_refused;  /* switch */
    uint64_t tx_frames, tx_bytes;       /* sender adapter */
    uint64_t flooded;                   /* switch */
    uint32_t ntouched, nsignals;
    int32_t touched[HV_NP_MAX_TOUCHED]; /* receiver ports with deltas to fold */
    int32_t signals[HV_NP_MAX_SIGNALS]; /* ports whose ring to signal, in order */
    /* A capture is running (in): each frame the switch accepts is appended to cap as a u32
     * length and its bytes, for Python to write to the pcap in order; a frame that does not
     * fit stops the batch before it. */
    uint32_t capture;
    uint32_t cap_cap, cap_used, ncap;   /* (in) cap_cap; the rest outputs */
    uint8_t *cap;                       /* (in) */
};

struct hv_np_mac_entry {
    uint32_t vlan;
    int32_t port;
    uint64_t mac;
    uint64_t seen;
};

struct hv_np_switch *hv_np_switch_new(uint64_t ageing_ns, uint64_t window_ns, uint32_t max_frames_per_window,
                                      uint32_t max_macs_per_port, uint32_t mtu);
void hv_np_switch_free(struct hv_np_switch *sw);
int32_t hv_np_port_add(struct hv_np_switch *sw);
void hv_np_port_remove(struct hv_np_switch *sw, int32_t port);
struct hv_np_port *hv_np_port_at(struct hv_np_switch *sw, int32_t port);

uint32_t hv_np_learn(struct hv_np_switch *sw, uint32_t vlan, uint64_t mac, int32_t port, uint64_t now);
int32_t hv_np_lookup(struct hv_np_switch *sw, uint32_t vlan, uint64_t mac, uint64_t now);
void hv_np_expire(struct hv_np_switch *sw, int32_t port, uint64_t now);
void hv_np_forget_port(struct hv_np_switch *sw, int32_t port);
uint32_t hv_np_mac_entries(const struct hv_np_switch *sw, struct hv_np_mac_entry *out, uint32_t cap);

struct hv_np_adapter *hv_np_adapter_new(void);
void hv_np_adapter_free(struct hv_np_adapter *a);
int hv_np_sections_reset(struct hv_np_adapter *a, uint32_t count);
int64_t hv_np_take(struct hv_np_adapter *a);
int hv_np_put_front(struct hv_np_adapter *a, uint32_t section);
int hv_np_put_back(struct hv_np_adapter *a, uint32_t section);
uint64_t hv_np_begin(struct hv_np_adapter *a, uint32_t section);
int64_t hv_np_complete(struct hv_np_adapter *a, uint64_t trans_id);
uint32_t hv_np_free_list(const struct hv_np_adapter *a, uint32_t *out, uint32_t cap);
uint32_t hv_np_in_flight(const struct hv_np_adapter *a, uint64_t *trans_ids, uint32_t *sections, uint32_t cap);

int hv_np_forward(struct hv_np_switch *sw, struct hv_np_adapter *a, const uint8_t *records, size_t len,
                  uint32_t offset, uint32_t max_packets, struct hv_np_batch *b);

#endif
