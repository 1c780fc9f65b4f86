/* The core's public C API, as Python sees it through cffi. This file is both C (core.h includes
 * it) and the cffi cdef (native/build_core.py reads it), so it holds only plain declarations: no
 * preprocessor lines, no macros. */

struct hv_host;

/* Simulated costs and scheduling periods (ns); defaults in ../shared/reference/cost-model.md §1. */
struct hv_costs {
    uint64_t hypercall_ns;        /* VM exit + a hypercall handled in the hypervisor (1 us) */
    uint64_t parent_exit_ns;      /* an exit handled by the parent's VM worker (4 us) */
    uint64_t message_ns;          /* SynIC message delivery (1 us) */
    uint64_t event_ns;            /* event-flag delivery (1 us) */
    uint64_t interrupt_ns;        /* taking an interrupt in the target VP (1 us) */
    uint64_t time_slice_ns;       /* scheduler time slice (10 ms) */
    uint64_t window_ns;           /* CPU-control accounting window (100 ms) */
    uint64_t stimer_min_period_ns;/* shortest period of a periodic synthetic timer (100 us) */
};

struct hv_host_config {
    uint64_t memory_bytes;        /* simulated host memory (SPA space), a multiple of 4 KiB */
    uint32_t logical_processors;
    uint32_t smt;                 /* threads per core; logical_processors is a multiple of it */
    uint64_t seed;
    uint32_t root_vps;            /* VPs of the root partition (0 = one per LP, at most 64) */
    uint32_t reps_per_call;       /* rep elements one invocation completes before it returns for
                                     continuation (the TLFS 50 us target); 0 = no limit */
    uint32_t scheduler;           /* 0 = Hyper-V classic, 1 = Hyper-V core */
    struct hv_costs costs;
    /* What grants (GPADLs) and own views may cost the process: each run of contiguous SPA pages
     * in one is a memory mapping, and a process has vm.max_map_count of them (65,530 by default).
     * 0 takes the default (grant.c). */
    uint32_t grant_pages_per_child;    /* pages one child may have granted at once (327,680: 1,280 MiB) */
    uint32_t grant_mappings_per_child; /* mappings one partition's grants and views may cost (1,024) */
    uint32_t grant_mappings_per_host;  /* mappings all partitions' grants and views may cost (32,768) */
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
    uint64_t run_time_ns;         /* CPU time its VPs have run */
    uint32_t started;             /* its VPs take part in scheduling (SUSPEND property is 0) */
    uint64_t messages_dropped;    /* messages queued for its VPs that DeleteVp discarded undelivered */
};

/* A VP whose Python guest must take its next step (hv_run). */
struct hv_resume {
    uint64_t partition_id;
    uint32_t vp_index;
    uint32_t reason;              /* HV_RESUME_* */
    uint32_t pending_sints;       /* SINTs raised since the guest last looked */
    uint32_t guest_handle;        /* HV_GUEST_PYTHON: its handle (hv_vp_set_guest's `a`), else 0 */
    uint64_t work_left_ns;        /* HV_STEP_COMPUTE_INTR ended early by an interrupt: the work left */
};

struct hv_vp_info {
    uint32_t exec;                /* 0 stopped, 1 runnable, 2 running, 3 halted, 4 waiting for its guest */
    int32_t lp;
    uint32_t guest_kind;
    uint32_t pending_sints;
    uint64_t run_time_ns, work_ns, debt_ns, window_used_ns;
};

struct hv_run_stats {
    uint64_t now, events_processed, events_pending;
    uint32_t runnable;
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

/* SetVpRegisters decoded as partition `caller_id`'s VP 0 would issue it (`in`: its input block,
 * header and `count` elements) and nothing applied: the status the call would return now. A
 * restore uses it to check every VP's saved registers before it changes anything. */
uint16_t hv_check_set_vp_registers(struct hv_host *h, uint64_t caller_id, const uint8_t *in, uint32_t count);

/* Introspection: for the host's owner (tests, management), never reachable by a partition. */
void hv_host_totals(struct hv_host *h, struct hv_host_totals *t);
uint32_t hv_host_partitions(struct hv_host *h, uint64_t *ids, uint32_t max);
int hv_partition_info(struct hv_host *h, uint64_t id, struct hv_partition_info *out);
/* run_time_ns of each of `count` partitions (hv_partition_info's figure) into out[i], UINT64_MAX
 * for an id that names none; returns how many were found (sample.c). */
uint32_t hv_partitions_run_time(struct hv_host *h, const uint64_t *ids, uint32_t count, uint64_t *out);
uint64_t hv_page_owners(struct hv_host *h, uint64_t first, uint32_t *out, uint64_t count);
uint64_t hv_pool_pages(struct hv_host *h, uint64_t id, uint64_t *out, uint64_t max);
uint64_t hv_partition_reach(struct hv_host *h, uint64_t id, uint64_t *gpas, uint64_t *pfns,
                            uint32_t *rights, uint64_t max);
void hv_state_digest(struct hv_host *h, int include_memory, uint8_t *out);

/* The shape of a hypercall as the dispatch table knows it: 0 or -1 for an unknown code. */
int hv_call_shape(uint16_t code, uint32_t *header_size, uint32_t *in_elem_size, uint32_t *out_size,
                  uint32_t *out_elem_size, int *rep, int *fast_ok, uint64_t *privilege);

/* One scheduling record (for Chrome/Perfetto traces): a VP went on (kind 1) or off (kind 2) an LP. */
struct hv_sched_record {
    uint64_t time_ns;
    uint64_t partition_id;
    uint32_t lp;
    uint32_t vp_index;
    uint32_t kind;
    uint32_t pad;
};

/* Record scheduling into a buffer of `capacity` records (0 turns recording off); drain it with
 * hv_sched_log_take before it fills (records past capacity are counted as dropped). */
int hv_sched_log_enable(struct hv_host *h, uint32_t capacity);
uint32_t hv_sched_log_take(struct hv_host *h, struct hv_sched_record *out, uint32_t max, uint64_t *dropped);

/* The crossing of a Python guest runner, positional: `steps` holds (op, arg) pairs, pair i the step
 * for record i of `batch` (the records the previous call wrote there; op 0: none, its guest
 * failed), applied in that order as hv_vp_step would (the index of the first refused one, or -1,
 * goes to *refused). hv_run_batch then runs as hv_run does, writing the next batch's records to
 * `batch` and one word per record to `words`: the VP's guest handle (hv_vp_set_guest) << 32, bit
 * 31 set if the record has work left, its reason << 16, its SINTs. */
void hv_apply_batch(struct hv_host *h, const uint64_t *steps, uint32_t n_steps, int32_t *refused,
                    const struct hv_resume *batch);
uint32_t hv_run_batch(struct hv_host *h, const uint64_t *steps, uint32_t n_steps, int32_t *refused,
                      uint64_t until, struct hv_resume *batch, uint64_t *words, uint32_t max);

/* Simulated time. Run until `until` (ns) or until Python guests must step: returns how many
 * resume records it wrote to `out` (0: it reached `until`). */
uint32_t hv_run(struct hv_host *h, uint64_t until, struct hv_resume *out, uint32_t max);
/* A Python guest's next step (HV_STEP_*): 0, or -1 if the VP is not waiting for one. */
int hv_vp_step(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t op, uint64_t arg);
/* What a VP runs (HV_GUEST_*; `a` is the tick guest's work per interrupt in ns, or the Python
 * guest's handle, which its resume words carry). */
int hv_vp_set_guest(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t kind, uint64_t a);
/* An emulated device's interrupt line was asserted for a VP (the parent's device model, through
 * the VM's intercept bus): charge it interrupt_ns and wake it if it is halted (not sleeping), or
 * end an interruptible computation, as a SINT would; no SINT bit is set (the guest asks its bus
 * which lines are up). 0, or -1 if there is no such VP. */
int hv_vp_device_interrupt(struct hv_host *h, uint64_t partition_id, uint32_t vp_index);
uint64_t hv_now(struct hv_host *h);
void hv_trace_digest(struct hv_host *h, uint8_t *out);
int hv_vp_info(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, struct hv_vp_info *out);
void hv_run_stats(struct hv_host *h, struct hv_run_stats *out);
uint64_t hv_lp_busy(struct hv_host *h, uint32_t lp);
/* Debug: while enabled, every scheduler pick is checked against a linear scan of the run queue.
 * Returns the picks that disagreed so far; *checked the picks checked so far. */
uint64_t hv_sched_selfcheck(struct hv_host *h, int enable, uint64_t *checked);
int32_t hv_lp_running(struct hv_host *h, uint32_t lp, uint64_t *partition_id);

/* Issue `count` hypercalls from one VP in one crossing (each through hv_hypercall); returns how
 * many were issued (fewer if stop_on_error and one failed). */
uint32_t hv_hypercall_batch(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint32_t count,
                            const uint64_t *controls, const uint64_t *in_args, const uint64_t *out_args,
                            uint64_t *results, int stop_on_error);
/* One VP's hypercall frame, allocated once per VP by the Python side: hv_hypercall_frame issues
 * an ordinary (memory) hypercall from that VP with the VP's input and output pages (in_gpa,
 * out_gpa), hv_hypercall_frame_at with others, and both copy the call's output block into `out`
 * in the same crossing. The result is hv_hypercall's, with the number of output bytes copied in
 * bits 31:16 (reserved in the TLFS result value; HV_FRAME_OUT_UNREAD there: longer than `out`,
 * not copied), and bit 63 (HV_FRAME_SAME) set when status, reps and output bytes are those of
 * the frame's previous call (`last`: that call's result value, without bit 63). */
#define HV_FRAME_OUT_SHIFT 16
#define HV_FRAME_OUT_UNREAD 0xFFFF
#define HV_FRAME_SAME 0x8000000000000000
struct hv_call_frame {
    struct hv_host *h;
    uint64_t partition_id;
    uint32_t vp_index;
    uint32_t reserved;
    uint64_t in_gpa;
    uint64_t out_gpa;
    uint64_t last;
    uint8_t out[4096];
};
uint64_t hv_hypercall_frame(struct hv_call_frame *f, uint64_t control);
uint64_t hv_hypercall_frame_at(struct hv_call_frame *f, uint64_t control, uint64_t in_arg, uint64_t out_arg);
/* Do nothing: the baselines of an empty cffi call, bare and with hv_hypercall's arguments. */
void hv_nop(void);
uint64_t hv_nop_hypercall(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint64_t control,
                          uint64_t in_arg, uint64_t out_arg, const uint64_t *xmm);
/* The benchmarks' memcpy baseline: `count` copies of `size` bytes, from src to dst, one after another. */
void hv_bench_memcpy(uint8_t *dst, const uint8_t *src, size_t size, uint32_t count);

/* A Python guest's duty cycle (what a cpu-burn workload does): compute busy_ns, then idle idle_ns,
 * for ever. The guest arms it with each step it takes for the cycle (hv_vp_cycle, before the step
 * is applied); when that step ends at a boundary where the guest would only take the cycle's next
 * step (its computation done or its idle timed out, no interrupt, nothing of its own to do), the
 * core takes that step itself, the same step the guest would have taken at the same point of the
 * same batch, and the guest is resumed only when something else happens. The fields describe the
 * step in flight, so a resumed guest goes on from them (hv_vp_cycle_state).
 * HV_CYCLE_KERNEL: the guest kernel's loop (interruptible computation split at the guest's next
 * timer, `horizon`; halts that an interrupt ends); HV_CYCLE_PLAIN: compute then sleep. */
#define HV_CYCLE_KERNEL 1
#define HV_CYCLE_PLAIN 2
#define HV_CYCLE_COMPUTE 1
#define HV_CYCLE_IDLE 2
struct hv_cycle {
    uint32_t kind;                /* HV_CYCLE_KERNEL or HV_CYCLE_PLAIN */
    uint32_t phase;               /* the step in flight: HV_CYCLE_COMPUTE or HV_CYCLE_IDLE */
    uint64_t busy_ns, idle_ns;    /* the period's two parts */
    uint64_t left_ns;             /* COMPUTE: the period's work left before the step in flight */
    uint64_t step_ns;             /* the step in flight's argument */
    uint64_t deadline;            /* IDLE: when the period's idle ends */
    uint64_t horizon;             /* KERNEL: when the guest's next timer is due, 0 if none */
    uint64_t steps;               /* steps the core has taken for the guest, in all */
    uint32_t dirty;               /* KERNEL: the guest has work of its own at its next boundary */
    uint32_t armed;               /* the step in flight is the cycle's (cleared when the guest resumes) */
};
/* Arm the cycle for the step the VP's guest takes now (-1: no such VP waiting for a step). */
int hv_vp_cycle(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, const struct hv_cycle *c);
/* The cycle's state: where a resumed guest's loop goes on from. */
int hv_vp_cycle_state(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, struct hv_cycle *out);
/* What the guest's own side is now (its code ran meanwhile): its next timer, and whether it has
 * work of its own at its next boundary. */
int hv_vp_cycle_sync(struct hv_host *h, uint64_t partition_id, uint32_t vp_index, uint64_t horizon, uint32_t dirty);
