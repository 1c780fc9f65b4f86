/* storvsp's data plane in C (native/storvsp.h has the division of work and the rules). */

#define HV_STORVSP_MAX_LUNS 64
#define HV_STORVSP_MAX_PFNS 129
#define HV_STORVSP_SRB_SIZE 52
#define HV_STORVSP_PACKET_SIZE 64

#define HV_STORVSP_SENT 0
#define HV_STORVSP_UNSENT 1
#define HV_STORVSP_PYTHON 2
#define HV_STORVSP_STALE 3
#define HV_STORVSP_WRITE 4

/* A host's link to a shared storage (partitions/datacenter/storage.py): one request at a time, in
 * arrival order, each holding it for its bytes at `bandwidth` bits per second and reaching the
 * storage `latency` ns after its last bit left. Every disk of every VM of the host on that storage
 * (and a quick migration's memory) queues on the one link. */
struct hv_storage_link {
    uint64_t bandwidth;
    uint64_t latency;
    uint64_t busy_until;
    uint64_t requests;
    uint64_t bytes;
    uint64_t busy_ns;
    uint64_t queued_ns;
};

struct hv_storvsp_lun {
    const struct hv_vhd_disk *disk;
    struct hv_storage_link *link;
    uint64_t blocks;
    uint32_t read_only;
    uint32_t present;
    uint64_t busy_until;
    uint64_t read_ops;
    uint64_t read_bytes;
    uint64_t write_ops;
    uint64_t write_bytes;
    uint64_t flushes;
    uint64_t errors;
};

struct hv_storvsp_req {
    uint64_t trans_id;
    uint64_t due;
    uint64_t offset;
    uint32_t length;
    uint32_t in_use;
    uint32_t handed;
    uint32_t lun;
    uint32_t write;
    uint32_t byte_count;
    uint32_t byte_offset;
    uint32_t npfns;
    uint8_t srb[52];
    uint64_t pfns[129];
};

struct hv_storvsp_done {
    uint32_t signal;
    uint32_t index;
    uint32_t lun;
    uint32_t write;
    uint64_t trans_id;
    uint64_t offset;
    uint32_t length;
    uint32_t reserved;
    uint8_t packet[64];
};

struct hv_storvsp {
    struct hv_host *host;
    uint64_t child_id;
    uint32_t max_outstanding;
    uint32_t max_transfer;
    uint64_t latency;
    uint64_t bandwidth;
    uint32_t nluns;
    uint32_t in_use;
    uint64_t completed;
    struct hv_storvsp_lun luns[64];
    struct hv_storvsp_req *reqs;
    uint8_t *scratch;
};

struct hv_storvsp *hv_storvsp_create(struct hv_host *h, uint64_t child_id, uint32_t max_outstanding,
                                     uint32_t max_transfer, uint64_t latency, uint64_t bandwidth, uint32_t nluns);
void hv_storvsp_destroy(struct hv_storvsp *s);
int hv_storvsp_submit(struct hv_storvsp *s, const uint8_t *records, size_t len, uint32_t count, uint64_t now,
                      uint32_t others, uint32_t *slots, uint64_t *dues, size_t *used);
int hv_storvsp_complete(struct hv_storvsp *s, uint32_t slot, uint8_t *ring, size_t ring_len,
                        struct hv_storvsp_done *done);
int hv_storvsp_written(struct hv_storvsp *s, uint32_t slot, uint8_t *ring, size_t ring_len,
                       struct hv_storvsp_done *done);
void hv_storvsp_release(struct hv_storvsp *s, uint32_t slot);
uint64_t hv_storage_link_cross(struct hv_storage_link *l, uint64_t now, uint64_t bytes);
