/* The core's public C API, as Python sees it through cffi. This file is both C (core.h includes
 * it) and the cffi cdef (native/build_core.py reads it), so it holds only plain declarations: no
 * preprocessor lines, no macros. */

struct hv_host;

struct hv_host_config {
    uint64_t memory_bytes;        /* simulated host memory (SPA space), a multiple of 4 KiB */
    uint32_t logical_processors;
    uint32_t smt;                 /* threads per core; logical_processors is a multiple of it */
    uint64_t seed;
    uint32_t root_vps;            /* VPs of the root partition (0 = one per LP, at most 64) */
    uint32_t reps_per_call;       /* rep elements one invocation completes before it returns for
                                     continuation (the TLFS 50 us target); 0 = no limit */
};

struct hv_host_totals {
    uint64_t pages;               /* SPA pages of the host */
    uint64_t hv_pages;            /* owned by the hypervisor (its reserve and every pool) */
    uint64_t free_pages;          /* owned by nobody */
    uint64_t partition_pages;     /* owned by some partition (sum of pages_owned) */
    uint32_t partitions;
};

struct hv_partition_info {
    uint64_t id;
    uint32_t slot;                /* the owner code of its pages in hv_page_owners */
    uint64_t parent_id;
    uint32_t state;               /* 1 created, 2 initialized, 3 finalized */
    uint64_t privileges;
    uint32_t cpu_reserve, cpu_cap, cpu_weight;
    uint64_t pages_owned;
    uint64_t pool_free, pool_used;
    uint64_t gpa_mapped;
    uint64_t vp_mask;             /* bit i set: VP i exists */
    uint64_t hypercalls, hypercalls_failed, reps;
};

uint32_t hv_core_abi_version(void);
uint32_t hv_status_count(void);
int hv_status_at(uint32_t i, uint16_t *code, const char **name, const char **message);
const char *hv_call_name(uint16_t code);

struct hv_host *hv_host_create(const struct hv_host_config *cfg);
void hv_host_destroy(struct hv_host *h);

/* The hypercall instruction, executed by VP `vp_index` of partition `partition_id`: returns the
 * TLFS result value (status in 15:0, reps completed in 43:32). For a memory call in_arg/out_arg
 * are GPAs in the caller's space; for a fast call they are RDX and R8, and xmm (12 uint64, may be
 * NULL) holds XMM0-XMM5. */
uint64_t hv_hypercall(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint64_t control,
                      uint64_t in_arg, uint64_t out_arg, const uint64_t *xmm);

/* A partition's loads and stores to its own memory (what its guest code may do): 0 or -1. */
int hv_partition_read(struct hv_host *h, uint64_t id, uint64_t gpa, uint8_t *buf, size_t len);
int hv_partition_write(struct hv_host *h, uint64_t id, uint64_t gpa, const uint8_t *buf, size_t len);

/* Introspection: for the host's owner (tests, management), never reachable by a partition. */
void hv_host_totals(struct hv_host *h, struct hv_host_totals *t);
uint32_t hv_host_partitions(struct hv_host *h, uint64_t *ids, uint32_t max);
int hv_partition_info(struct hv_host *h, uint64_t id, struct hv_partition_info *out);
uint64_t hv_page_owners(struct hv_host *h, uint64_t first, uint32_t *out, uint64_t count);
uint64_t hv_pool_pages(struct hv_host *h, uint64_t id, uint64_t *out, uint64_t max);
uint64_t hv_partition_reach(struct hv_host *h, uint64_t id, uint64_t *gpas, uint64_t *pfns,
                            uint32_t *rights, uint64_t max);
void hv_state_digest(struct hv_host *h, int include_memory, uint8_t *out);

/* The shape of a hypercall as the dispatch table knows it: 0 or -1 for an unknown code. */
int hv_call_shape(uint16_t code, uint32_t *header_size, uint32_t *in_elem_size, uint32_t *out_size,
                  uint32_t *out_elem_size, int *rep, int *fast_ok, uint64_t *privilege);
