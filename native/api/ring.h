/* VMBus ring fast path (native/ring.h has the layout, the rules and the record format). */

#define HV_RING_CONTROL_SIZE 4096
#define HV_RING_MIN_DATA_SIZE 32
#define HV_RING_MAX_DATA_SIZE 2147483648

#define HV_RING_EINVAL 1
#define HV_RING_EMSGSIZE 2
#define HV_RING_EBAD_WRITE_INDEX 3
#define HV_RING_EBAD_READ_INDEX 4
#define HV_RING_EBAD_DESCRIPTOR 5
#define HV_RING_ETRUNCATED 6
#define HV_RING_ETAMPERED 7

#define HV_RING_STOP_EMPTY 0
#define HV_RING_STOP_MAX 1
#define HV_RING_STOP_OUT_FULL 2
#define HV_RING_STOP_CORRUPT 3

struct hv_ring_result {
    uint32_t signal;
    uint32_t index;
    uint32_t out_used;
    uint32_t stop;
};

int hv_ring_write_batch(uint8_t *ring, size_t ring_len,
                        const uint8_t *payloads, const uint32_t *lengths, uint32_t count,
                        uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                        struct hv_ring_result *result);

int hv_ring_write_gathered(uint8_t *ring, size_t ring_len,
                           const uint8_t *payloads, uint64_t payloads_len, const uint32_t *lengths,
                           uint32_t count, uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                           struct hv_ring_result *result);

int hv_ring_write_batchv(uint8_t *ring, size_t ring_len,
                         const uint8_t *const *payloads, const uint32_t *lengths, uint32_t count,
                         uint16_t type, uint16_t flags, const uint64_t *trans_ids,
                         struct hv_ring_result *result);

int hv_ring_write_packet(uint8_t *ring, size_t ring_len, const uint8_t *header,
                         uint32_t header_len, const uint8_t *payload, uint32_t len,
                         uint16_t type, uint16_t flags, uint64_t trans_id,
                         struct hv_ring_result *result);

int hv_ring_read_batch(uint8_t *ring, size_t ring_len, uint8_t *out, size_t out_cap,
                       uint32_t max_packets, struct hv_ring_result *result);

#define HV_RING_RECEIVE_MAX_OUT 8191
#define HV_RING_RECEIVE_MAX_PACKETS 65535

struct hv_ring_span {
    uint8_t *ring;
    uint64_t ring_len;
    uint8_t *out;
    uint32_t out_cap;
    uint32_t reserved;
};

int64_t hv_ring_send(const struct hv_ring_span *span, uint32_t own, const uint8_t *payload,
                     uint32_t len);

int64_t hv_ring_receive(const struct hv_ring_span *span, uint32_t own, uint32_t max_packets);
