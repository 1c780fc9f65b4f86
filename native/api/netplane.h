/* The network data plane (native/netplane.h has the rules and the field meanings). */

#define HV_NP_NO_PORT   -1
#define HV_NP_TRUNK     -1
#define HV_NP_ADOPT     4294967295
#define HV_NP_MAX_TOUCHED 32
#define HV_NP_MAX_SIGNALS 64
#define HV_NP_MAX_FLOOD 16

#define HV_NP_MOVED   1
#define HV_NP_REFUSED 2

struct hv_np_adapter;

struct hv_np_port {
    int32_t in_use;
    int32_t vlan;
    int32_t deliverable;
    uint32_t learned;
    uint64_t next_expiry;
    struct hv_np_adapter *adapter;

    uint64_t d_tx_frames, d_tx_bytes, d_dropped_refused;
    int32_t touched;
    uint64_t seq;
};

struct hv_np_mac {
    uint64_t key;
    uint64_t seen;
    int32_t port;
};

struct hv_np_switch {
    uint64_t ageing_ns;
    uint64_t window_ns;
    uint32_t max_frames_per_window;
    uint32_t max_macs_per_port;
    uint32_t mtu;
    uint32_t nports;
    struct hv_np_port *ports;
    struct hv_np_mac *macs;
    uint32_t mac_cap, mac_count;
    uint64_t next_seq;
};

struct hv_np_adapter {

    uint8_t mac[6];
    uint8_t version_ok, rndis_ready;
    uint8_t quiesced, broken;
    uint8_t pad[6];
    uint32_t mtu;
    uint32_t packet_filter;
    int32_t port;
    uint8_t *recv;
    uint32_t recv_size, recv_count;
    uint32_t recv_id;
    uint8_t *send;
    uint32_t send_size, send_count;
    uint8_t *ring;
    size_t ring_len;
    uint32_t w;

    uint32_t *free_q;
    uint32_t free_head, free_len, free_cap;
    uint64_t *ift_key;
    uint32_t *ift_val;
    uint32_t ift_cap, ift_len;
    uint64_t next_transfer;

    uint64_t d_rx_frames, d_rx_bytes, d_rx_filtered, d_rx_no_buffer, d_rx_ring_full;
    uint32_t wrote;
};

struct hv_np_batch {
    uint64_t now;
    uint64_t window_start;
    uint32_t window_count;
    uint32_t handled;
    uint32_t offset;
    uint32_t completion_pending;
    uint64_t completion_tid;
    uint64_t rx_frames, rx_bytes;
    uint64_t forwarded, filtered, mac_moves, learn_refused;
    uint64_t tx_frames, tx_bytes;
    uint64_t flooded;
    uint32_t ntouched, nsignals;
    int32_t touched[HV_NP_MAX_TOUCHED];
    int32_t signals[HV_NP_MAX_SIGNALS];

    uint32_t capture;
    uint32_t cap_cap, cap_used, ncap;
    uint8_t *cap;
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
