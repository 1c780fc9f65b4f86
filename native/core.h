/* core.h: every object of the hypervisor core and all of its state, in one place.
 *
 * All state the isolation argument rests on is reachable from one `struct hv_host`: several hosts
 * may live in one process (tests create many), so there are no file-scope globals. One line of
 * comment per field says what it holds and the invariant it keeps.
 */
#ifndef HV_CORE_H
#define HV_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hv_abi.h"
/* The types and calls Python sees; written so that the same file is both C and the cffi cdef. */
#include "api/core.h"
#include "api/grant.h"
#include "api/visibility.h"
#include "api/overlay.h"
#include "api/migration.h"
#include "synic.h"
#include "port.h"

#define HV_CORE_ABI_VERSION 1u

#define HV_MAX_PARTITIONS 2048u      /* slots, root included (Hyper-V: 1,024 running VMs) */
#define HV_MAX_VPS        64u        /* per partition (cost-model §5) */
#define HV_ID_TABLE_SIZE  (2u * HV_MAX_PARTITIONS) /* partition id hash table (partition.c) */
#define HV_MAX_GPA_PAGES  (1u << 24) /* a child's GPA space: 64 GiB */
#define HV_LEAF_ENTRIES   512u       /* GPA map leaf table: one 4 KiB page of 8-byte entries */
#define HV_HV_RESERVED_PAGES 16u     /* SPA pages the hypervisor keeps for itself at boot */
#define HV_PARTITION_INIT_PAGES 1u   /* pool pages InitializePartition consumes */
#define HV_VP_PAGES       1u         /* pool pages one VP consumes */

/* Page owners (the owner table holds one uint32 per SPA page). Partition slots are owners
 * 0..HV_MAX_PARTITIONS-1, slot 0 being the root: a fresh, all-zero owner table therefore says
 * "the root owns every page", which is Hyper-V's boot state and costs nothing until touched. */
#define HV_OWNER_FREE 0xFFFFFFFEu
#define HV_OWNER_HV   0xFFFFFFFFu

/* GPA map leaf entry: bit 0 present, bits 1..3 rights (HV_MAP_GPA_* << 1), 63:12 SPA pfn. */
#define HV_PTE_PRESENT 0x1ull
#define HV_PTE_RIGHTS_SHIFT 1

/* What a VP is doing, from the scheduler's point of view. */
enum hv_vp_exec {
    HV_VP_STOPPED = 0,   /* not started (or its partition stopped): never scheduled */
    HV_VP_RUNNABLE = 1,  /* has work and waits for an LP */
    HV_VP_RUNNING = 2,   /* on an LP */
    HV_VP_HALTED = 3,    /* waits for an interrupt (or its wake_at time) */
    HV_VP_GUEST = 4,     /* waits for its Python guest to say what it does next */
};

enum hv_partition_state {
    HV_PARTITION_CREATED = 1,     /* properties may be set; no VPs, no memory map */
    HV_PARTITION_INITIALIZED = 2, /* VPs and GPA mappings may be added; VPs may run */
    HV_PARTITION_FINALIZED = 3,   /* stopped for good: may be unmapped, withdrawn, deleted */
};

struct hv_vp {
    uint32_t index;              /* VP index within its partition */
    uint64_t pool_page;          /* SPA pfn of its hypervisor page (from the partition's pool) */
    uint64_t gp[16];             /* RAX..R15 in x64 register-name order */
    uint64_t rip, rflags, cr0, cr3, cr4;
    uint64_t guest_os_id;        /* HV_REGISTER_GUEST_OS_ID */
    uint64_t run_time_ns;        /* time this VP has run (HV_REGISTER_VP_RUNTIME / 100) */
    struct hv_synic synic;       /* SINTs, SIMP/SIEFP, message queues, synthetic timers (synic.c) */
    /* ---- execution (run.c, sched_*.c) ---- */
    uint32_t part_slot;          /* its partition's slot */
    enum hv_vp_exec exec;        /* see enum hv_vp_exec */
    int32_t lp;                  /* LP it runs on, -1 if none */
    uint64_t work_ns;            /* CPU time it still has to spend before its guest's next step */
    uint64_t debt_ns;            /* costs charged (hypercalls, interrupts) not yet spent */
    uint32_t pending_sints;      /* SINT interrupts raised since the guest last looked */
    uint32_t guest_kind;         /* HV_GUEST_* */
    uint32_t guest_handle;       /* HV_GUEST_PYTHON: the runner's number for its guest (0: none), in its resume words */
    uint64_t tick_period_ns, tick_work_ns; /* HV_GUEST_TICK parameters */
    uint64_t wake_at;            /* HV_VP_HALTED with a timeout: when it wakes, else 0 */
    uint64_t wake_seq;           /* guard of its pending wake event (from host->vp_guard_seq) */
    uint64_t slice_end;          /* when its current slice ends */
    uint64_t slice_seq;          /* guard of its pending slice event (from host->vp_guard_seq) */
    uint64_t dispatched_at;      /* when it last went on an LP */
    uint64_t window_used_ns;     /* run time in the current accounting window */
    uint64_t vruntime;           /* weighted virtual run time (fair share) */
    uint32_t resume_reason;      /* HV_RESUME_* it will report to its guest */
    bool in_resume_list;
    bool sleeping;               /* halted by a guest sleep: only its timeout wakes it */
    bool interruptible;          /* its work is an HV_STEP_COMPUTE_INTR: an interrupt ends it */
    uint64_t work_left_ns;       /* what an interrupt left of that work, for its resume record */
    int32_t rq_pos;              /* index in host->rq, -1 if not runnable */
    uint32_t rq_class;           /* its heap in host->rq_heap while runnable (HV_RQ_*) */
    uint32_t rq_hpos;            /* its index in that heap (valid while rq_pos >= 0) */
    uint64_t window_epoch;       /* the window window_used_ns counts; older: it counts 0 (hv_sched_window_used) */
    struct hv_cycle cycle;       /* its Python guest's duty cycle, taken by the core between interrupts (run.c) */
    uint64_t stall_ns;           /* time fetching absent pages for it cost, not yet waited (pager.c) */
    bool stalled;                /* halted for a stall: its guest's step (stalled_op, _arg) follows */
    uint32_t stalled_op;
    uint64_t stalled_arg;
};

/* A run-queue heap entry (sched_classic.c): a runnable VP and its key, which does not change while
 * it is runnable: (vruntime, partition slot << 32 | VP index). */
struct hv_rq_entry {
    uint64_t vruntime;
    uint64_t tie;
    struct hv_vp *vp;
};

struct hv_page_list {             /* a growable array of SPA pfns */
    uint64_t *pfn;
    uint64_t len, cap;
};

/* A grant: pages of a child made reachable by its parent (a VMBus GPADL), with a contiguous
 * view of them for the parent's ring code. */
struct hv_grant {
    uint32_t child_slot;
    bool own;                     /* a view of the partition's own pages, not a grant to its parent */
    uint32_t id;                  /* the GPADL id (or view id); unique per child and kind */
    uint32_t npages;
    uint64_t *gpas;               /* the child's GPA pages, in grant order */
    uint64_t *pfns;               /* their SPA pages */
    uint8_t *view;                /* npages contiguous pages mapping pfns */
    struct hv_mapping *map;       /* the view's address range, shared with Python's exports (grant.c) */
    uint32_t runs;                /* runs of contiguous SPA pages: the mappings the view costs */
    uint8_t visible;              /* a host-visible view (visibility.c): the HV_HOST_VISIBILITY_* its
                                     pages need; 0 for grants and own views */
};

/* A page of a writable view, for the dirty log's reads (dirty.c). */
struct hv_view_page { uint64_t gpa, pfn; };
struct hv_view_index {            /* a partition's writable view pages, sorted by GPA page */
    struct hv_view_page *page;
    uint64_t n;
    uint64_t gen;                 /* host->grants_gen when it was made */
    bool built;
};

struct hv_partition_counters {
    uint64_t hypercalls;          /* hypercalls this partition issued */
    uint64_t hypercalls_failed;   /* of those, how many returned a status other than SUCCESS */
    uint64_t reps;                /* rep elements completed */
    uint64_t messages_dropped;    /* messages queued for its VPs that DeleteVp discarded undelivered */
};

struct hv_partition {
    uint64_t id;                  /* HV partition id, never reused within a host */
    uint32_t slot;                /* index in host->parts and the page-owner code */
    uint32_t parent_slot;         /* the partition that created it (the root for itself) */
    enum hv_partition_state state;
    uint64_t privileges;          /* HV_PARTITION_PRIVILEGE_MASK */
    uint32_t cpu_reserve;         /* % of one LP per VP (0..100) */
    uint32_t cpu_cap;             /* % of one LP per VP (1..100) */
    uint32_t cpu_weight;          /* 1..10000 */
    uint64_t pages_owned;         /* SPA pages whose owner is this slot (matches the owner table) */
    struct hv_page_list pool_free;/* deposited pages not yet used; owner HV */
    struct hv_page_list pool_used;/* deposited pages holding hypervisor structures; owner HV */
    uint64_t *gpa_leaf;           /* children: SPA pfn of the leaf table per 512-page GPA region, 0 = none */
    uint16_t *gpa_leaf_count;     /* entries present in each leaf table */
    uint64_t gpa_mapped;          /* GPA pages mapped in this partition */
    struct hv_vp *vps[HV_MAX_VPS];/* NULL where no VP exists */
    struct hv_partition_counters counters;
    uint64_t run_time_ns;         /* sum of its VPs' run time */
    bool started;                 /* its VPs take part in scheduling */
    uint64_t granted_pages;       /* pages of its live grants to its parent (not own views) */
    uint32_t grant_mappings;      /* mappings its live grants and own views cost the process */
    uint64_t hypercall_msr;       /* HV_X64_MSR_HYPERCALL: while enabled, the hypercall page overlays
                                     that GPA page: reads see the overlay, writes fault (overlay.c) */
    uint64_t *dirty_log;          /* while its parent tracks it: bitmap by SPA page, set on every write
                                     the core makes into a page it owns; NULL when off (dirty.c) */
    struct hv_pager_stats pager;  /* its absent pages and their faults (pager.c) */
    struct hv_view_index dirty_views; /* its writable view pages by GPA, while its log is read (dirty.c) */
};


/* A running digest: two independent 64-bit lanes over 64-bit words. Not cryptographic, only a
 * change detector (state digest, trace digest). */
struct hv_digest { uint64_t a, b; };
static inline void hv_digest_init(struct hv_digest *d) { d->a = 0xcbf29ce484222325ull; d->b = 0x84222325cbf29ce4ull; }
static inline void hv_digest_u64(struct hv_digest *d, uint64_t v)
{
    d->a = (d->a ^ v) * 0x100000001b3ull;
    d->a ^= d->a >> 29;
    d->b = (d->b + v + 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
    d->b ^= d->b >> 31;
}

enum hv_event_kind {
    HV_EV_SLICE = 1,     /* a VP's slice or work ends: charge it, pick again */
    HV_EV_WAKE = 2,      /* a halted VP's timeout */
    HV_EV_STIMER = 3,    /* a synthetic timer expires (synic.c) */
    HV_EV_WINDOW = 4,    /* a new accounting window starts */
};

/* Guest contexts a VP runs (hv_vp_set_guest). */
#define HV_GUEST_NONE   0u  /* nothing: the VP halts and only spends interrupt costs */
#define HV_GUEST_PYTHON 1u  /* a Python coroutine: the run loop returns to Python for its steps */
#define HV_GUEST_BURN   2u  /* computes forever, all in C */
#define HV_GUEST_TICK   3u  /* an idle kernel: on each interrupt computes tick_work_ns, acknowledges
                               its SynIC messages and flags, halts again; all in C */
/* Steps a Python guest takes (hv_vp_step). */
#define HV_STEP_COMPUTE 1u  /* spend arg ns of CPU time */
#define HV_STEP_HALT    2u  /* wait for an interrupt (arg: timeout ns, 0 = none) */
#define HV_STEP_SLEEP   3u  /* wait arg ns; interrupts stay pending */
#define HV_STEP_STOP    4u  /* the guest ended: the VP halts for good */
#define HV_STEP_COMPUTE_INTR 5u  /* spend arg ns of CPU time; a SINT raised meanwhile ends it early
                                    (HV_RESUME_INTERRUPT, with the work left in the resume record) */
/* Why a Python guest is resumed. */
#define HV_RESUME_START     1u
#define HV_RESUME_STEP      2u  /* its computation finished */
#define HV_RESUME_INTERRUPT 3u  /* an interrupt woke it */
#define HV_RESUME_TIMEOUT   4u  /* its halt or sleep timed out */
#define HV_WORK_FOREVER UINT64_MAX

struct hv_event {
    uint64_t time, seq;
    uint32_t kind;
    uint32_t slot, vp;   /* partition slot and VP index, where relevant */
    uint64_t arg, arg2;  /* kind-specific (timer index, sequence guard) */
};

struct hv_lp {
    uint32_t index;
    uint32_t core;       /* index / smt: SMT siblings share it */
    struct hv_vp *vp;    /* running VP, NULL when idle */
    uint64_t busy_ns;    /* time it ran VPs */
};

/* A scheduling policy: hooks the run loop calls. One file per policy (sched_*.c). */
struct hv_sched_ops {
    const char *name;
    /* Whether partition p may start (admission control); returns an HV_STATUS. */
    uint16_t (*admit)(struct hv_host *h, struct hv_partition *p);
    /* The VP to run next on LP lp, or NULL to leave it idle. */
    struct hv_vp *(*pick)(struct hv_host *h, struct hv_lp *lp);
    /* How long `vp` may run from now before the policy wants to decide again. */
    uint64_t (*budget)(struct hv_host *h, struct hv_vp *vp);
    /* vp ran `ns`: account it. */
    void (*charge)(struct hv_host *h, struct hv_vp *vp, uint64_t ns);
    /* A new accounting window starts. */
    void (*window)(struct hv_host *h);
    /* vp becomes runnable after waiting (halted or stopped), not after a preemption. */
    void (*rejoin)(struct hv_host *h, struct hv_vp *vp);
};

struct hv_host {
    struct hv_host_config cfg;
    uint64_t nr_pages;            /* SPA pages */
    uint8_t *spa;                 /* the SPA space: a sparse memory file mapped once, touched lazily */
    int spa_fd;                   /* that memory file (grant views map its pages again) */
    uint16_t *grant_refs;         /* per SPA page: live grants to the parent naming it (its reach) */
    uint16_t *pin_refs;           /* per SPA page: live grants and own views naming it (it cannot move) */
    uint8_t *host_vis;            /* per SPA page: the HV_HOST_VISIBILITY_* its owning child gave it (0
                                     for every other page; reset whenever the page changes owner) */
    struct hv_grant **grants;     /* live grants, in creation order */
    uint32_t nr_grants, cap_grants;
    uint64_t grants_gen;          /* bumped whenever a grant or view is made or released (dirty.c's index) */
    uint64_t grant_mappings;      /* mappings every live grant and own view costs (sum over partitions) */
    struct hv_grant_refusal grant_refusal; /* why the last refused grant or view was refused */
    uint64_t teardown_visits;     /* table entries partition teardown has visited (a work counter) */
    uint32_t *owner;              /* owner code per SPA page (see HV_OWNER_*), lazily zero */
    uint64_t *dirty;              /* bitmap: page may hold non-zero bytes (zeroing is skipped otherwise) */
    uint32_t dirty_logs;          /* partitions with a dirty log: while 0 a write sets no log bit (dirty.c) */
    uint64_t *absent;             /* bitmap by SPA page: an absent page of a child, fetched at first touch (pager.c) */
    uint64_t absent_pages;        /* bits set in it: while 0 a translation checks nothing more */
    hv_pager_fn pager_fn;         /* the parent's pager callback, NULL if none (every fault fails) */
    bool in_pager;                /* the callback is running: a fault now fails (no re-entry) */
    struct hv_vp *touch_vp;       /* the VP the core accesses guest memory for now (a hypercall's caller, a
                                     SynIC delivery's target), NULL if none: who a fetch stalls */
    struct hv_page_list free_pages;/* SPA pages owned by nobody (owner HV_OWNER_FREE), all zero */
    uint64_t hv_pages;            /* pages owned by the hypervisor (reserved + every pool) */
    struct hv_partition *parts[HV_MAX_PARTITIONS]; /* by slot; slot 0 is the root */
    uint64_t slots_used[HV_MAX_PARTITIONS / 64]; /* bitmap: slot s holds a partition (parts[s] != NULL) */
    /* Live partitions by id: open addressing with linear probing, backward-shift deletion (no
     * tombstones), at most half full; a deleted partition's id is gone from it at once. */
    struct hv_partition *by_id[HV_ID_TABLE_SIZE];
    uint64_t next_partition_id;   /* next id CreatePartition hands out */
    uint32_t current_slot, current_vp; /* the caller of the hypercall in progress */
    struct hv_port_space ports;   /* ports and connections of every partition (port.c) */
    /* ---- time and scheduling (run.c, event.c, sched_*.c) ---- */
    struct hv_costs costs;        /* simulated costs (host settings) */
    uint64_t now;                 /* simulated time, ns */
    uint64_t seq;                 /* event sequence: ties in time break by it */
    uint64_t vp_guard_seq;        /* the last wake/slice guard handed to a VP (run.c): host-wide, so a
                                     deleted partition's queued events never match a later VP */
    struct hv_event *events;      /* binary min-heap on (time, seq) */
    uint32_t nr_events, cap_events;
    struct hv_lp *lps;            /* logical processors */
    const struct hv_sched_ops *sched; /* the scheduling policy */
    uint64_t window_start;        /* start of the current accounting window */
    struct hv_digest trace;       /* running digest of every event and scheduling decision */
    struct hv_vp **rq;            /* runnable VPs (order irrelevant: picks break ties by id) */
    uint32_t nr_rq, cap_rq;
    /* The fair-share run queue (sched_classic.c): the runnable VPs again, in three binary min-heaps
     * on (vruntime, slot, VP index), one per class: under its reserve, the rest, capped. A class
     * depends on the window's use and the partition's controls, which only change for runnable
     * VPs at a window or a control change: then rq_stale says the heaps must be sorted again. */
    struct hv_rq_entry *rq_heap[3]; /* each entry holds its VP's key, so a sift reads no VP */
    uint32_t nr_rq_heap[3], cap_rq_heap[3];
    bool rq_stale;
    uint64_t window_epoch;        /* accounting windows started so far */
    bool sched_check;             /* debug: every pick is checked against a scan of host->rq */
    uint64_t sched_checked, sched_mismatches;
    uint64_t events_processed;
    struct hv_vp **resume;        /* VPs whose Python guest must take its next step */
    uint32_t nr_resume, cap_resume;
    /* Cycle steps the core decided for the leading VPs of a batch that also goes to Python:
     * applied, in batch order, before the steps Python returns (as Python applies a batch's steps
     * after all of its guests' code ran), so a later guest's hypercalls precede them as they would
     * if Python had taken every step. */
    struct hv_held_step { uint64_t partition_id; uint32_t vp_index, op; uint64_t arg; } *held;
    uint32_t nr_held, cap_held;
    struct hv_sched_record *sched_log; /* scheduling records for traces (off when cap is 0) */
    uint32_t nr_sched_log, cap_sched_log;
    uint64_t sched_log_dropped;   /* records lost because nobody drained the buffer */
};

/* ---- run.c: execution of VPs in simulated time ----------------------------------------------- */
void hv_event_push(struct hv_host *h, uint64_t time, uint32_t kind, uint32_t slot, uint32_t vp,
                   uint64_t arg, uint64_t arg2);
/* Raise SINT `sint` on a VP: record it and wake the VP if it is halted. */
void hv_vp_raise_interrupt(struct hv_host *h, struct hv_vp *vp, uint32_t sint);
/* Charge a cost to a VP (spent as CPU time before its guest's next step). */
void hv_vp_charge(struct hv_host *h, struct hv_vp *vp, uint64_t ns);
struct hv_vp *hv_vp_lookup(struct hv_host *h, uint32_t slot, uint32_t vp_index);
extern const struct hv_sched_ops hv_sched_classic, hv_sched_core;
/* Start or stop a partition's VPs taking part in scheduling (the SUSPEND property). */
uint16_t hv_partition_set_running(struct hv_host *h, struct hv_partition *p, bool run);
int hv_run_init(struct hv_host *h);
void hv_run_fini(struct hv_host *h);
/* Fair-share helpers shared by the policies (sched_classic.c). */
uint64_t hv_sched_cap_ns(const struct hv_host *h, const struct hv_vp *vp);
uint64_t hv_sched_reserve_ns(const struct hv_host *h, const struct hv_vp *vp);
bool hv_sched_fairer(const struct hv_host *h, const struct hv_vp *a, const struct hv_vp *b);
struct hv_vp *hv_sched_pick_fair(struct hv_host *h, uint32_t only_slot);
uint64_t hv_sched_fair_budget(struct hv_host *h, struct hv_vp *vp);
void hv_sched_fair_charge(struct hv_host *h, struct hv_vp *vp, uint64_t ns);
void hv_sched_fair_window(struct hv_host *h);
void hv_sched_fair_rejoin(struct hv_host *h, struct hv_vp *vp);
uint16_t hv_sched_fair_admit(struct hv_host *h, struct hv_partition *p);
/* The run queue's index (sched_classic.c): run.c calls these as VPs join and leave host->rq; a
 * change of a partition's reserve or cap calls hv_sched_controls_changed. */
#define HV_RQ_RESERVE 0u  /* under its reserve in this window */
#define HV_RQ_FAIR    1u
#define HV_RQ_CAPPED  2u  /* at its cap until the next window */
void hv_sched_rq_insert(struct hv_host *h, struct hv_vp *vp);
void hv_sched_rq_erase(struct hv_host *h, struct hv_vp *vp);
void hv_sched_controls_changed(struct hv_host *h);
void hv_sched_rq_fini(struct hv_host *h);
uint64_t hv_sched_window_used(const struct hv_host *h, const struct hv_vp *vp);

/* ---- memory.c: SPA pages, owners, GPA maps, a partition's access to its own memory ---------- */
int hv_mem_init(struct hv_host *h);
void hv_mem_fini(struct hv_host *h);
uint8_t *hv_spa_page(struct hv_host *h, uint64_t pfn);
void hv_page_set_owner(struct hv_host *h, uint64_t pfn, uint32_t owner); /* zeroes the page */
void hv_page_mark_dirty(struct hv_host *h, uint64_t pfn);
bool hv_page_list_push(struct hv_page_list *l, uint64_t pfn);
bool hv_page_list_reserve(struct hv_page_list *l, uint64_t extra);
void hv_page_list_free(struct hv_page_list *l);
/* Translate a GPA page of partition p to an SPA pfn if mapped with all of `rights`. */
bool hv_gpa_translate(struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page,
                      uint32_t rights, uint64_t *pfn);
uint64_t hv_gpa_entry(const struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page);
uint32_t hv_gpa_new_leaves(const struct hv_host *h, const struct hv_partition *p,
                           uint64_t first, uint64_t count);
void hv_gpa_map(struct hv_host *h, struct hv_partition *p, uint64_t gpa_page, uint64_t pfn, uint32_t rights);
uint64_t hv_gpa_unmap(struct hv_host *h, struct hv_partition *p, uint64_t gpa_page);
uint64_t hv_pool_take(struct hv_host *h, struct hv_partition *p);   /* free -> used */
void hv_pool_give_back(struct hv_host *h, struct hv_partition *p, uint64_t pfn); /* used -> free */
/* Copy between a partition's own memory and a host buffer, page by page; false on a fault. */
bool hv_guest_read(struct hv_host *h, const struct hv_partition *p, uint64_t gpa, void *buf, size_t len);
bool hv_guest_write(struct hv_host *h, const struct hv_partition *p, uint64_t gpa, const void *buf, size_t len);

/* ---- overlay.c: the hypercall page over a partition's GPA space ---- */
bool hv_overlay_covers(const struct hv_partition *p, uint64_t gpa_page);
void hv_overlay_read(size_t off, uint8_t *buf, size_t len); /* bytes of the hypercall page */
uint16_t hv_overlay_check_msr(struct hv_host *h, const struct hv_partition *p, const struct hv_vp *vp, uint64_t value);
/* ---- grant.c ---- */
/* A grant (visible = 0) or host-visible view (visible = the HV_HOST_VISIBILITY_* every page needs)
 * of child p's pages; a page not visible enough is refused with ACCESS_DENIED and put in *bad. */
uint16_t hv_grant_make(struct hv_host *h, struct hv_partition *p, uint32_t id, const uint64_t *gpa_pages,
                       uint32_t count, uint8_t visible, uint64_t *bad);
int hv_grant_find_visible(const struct hv_host *h, uint32_t slot, uint32_t id);
void hv_grant_drop(struct hv_host *h, uint32_t index);
struct hv_mapping *hv_grant_export_at(struct hv_host *h, uint32_t index, uint8_t **base, uint32_t *npages);
/* The rights the root has on SPA page pfn: its own and granted pages all, a child's host-visible
 * pages read (and write if read-write visible), others none. */
static inline uint32_t hv_root_rights(const struct hv_host *h, uint64_t pfn)
{
    if (h->owner[pfn] == 0 || h->grant_refs[pfn])
        return HV_MAP_GPA_VALID_MASK;
    if (h->host_vis[pfn] == HV_HOST_VISIBILITY_READ_WRITE)
        return HV_MAP_GPA_READABLE | HV_MAP_GPA_WRITABLE;
    return h->host_vis[pfn] == HV_HOST_VISIBILITY_READ_ONLY ? HV_MAP_GPA_READABLE : 0;
}
/* ---- visibility.c ---- */
void hv_visibility_digest(const struct hv_host *h, struct hv_digest *d);
void hv_grants_drop_partition(struct hv_host *h, uint32_t slot);
void hv_grants_fini(struct hv_host *h);
void hv_grants_digest(const struct hv_host *h, struct hv_digest *d);

/* ---- partition.c ---------------------------------------------------------------------------- */
struct hv_partition *hv_partition_alloc(struct hv_host *h, uint32_t parent_slot);
void hv_partition_destroy(struct hv_host *h, struct hv_partition *p);
struct hv_partition *hv_partition_by_id(struct hv_host *h, uint64_t id);

/* ---- vp.c ----------------------------------------------------------------------------------- */
struct hv_vp *hv_vp_alloc(uint32_t index);
void hv_vp_free(struct hv_vp *vp);

/* ---- hypercall.c: one entry point ------------------------------------------------------------ */
/* A decoded call, as handlers see it. Handlers validate everything, then apply. */
struct hv_call {
    struct hv_host *h;
    struct hv_partition *caller;
    struct hv_vp *vp;
    uint16_t code;
    bool fast;
    uint32_t rep_count, rep_start, rep_end; /* rep_end: where this invocation stops */
    const uint8_t *in;            /* a private copy of the input block */
    uint32_t in_len;
    uint8_t *out;                 /* a private output block, copied out on success */
    uint32_t out_len;
};

struct hv_call_desc {
    const char *name;
    uint64_t privilege;           /* HV_PRIV(...) mask the caller needs, 0 = none */
    uint32_t header_size;         /* fixed input header bytes */
    uint32_t in_elem_size;        /* rep input element size (0: none) */
    uint32_t out_size;            /* fixed output bytes */
    uint32_t out_elem_size;       /* rep output element size (0: none) */
    bool rep;                     /* a rep call */
    bool fast_ok;                 /* may be issued as a register-based (fast) call */
    uint16_t (*handler)(struct hv_call *c);
};

const struct hv_call_desc *hv_call_lookup(uint16_t code);

/* Handlers (partition.c, memory_calls.c, vp.c). */
uint16_t hv_call_create_partition(struct hv_call *c);
uint16_t hv_call_initialize_partition(struct hv_call *c);
uint16_t hv_call_finalize_partition(struct hv_call *c);
uint16_t hv_call_delete_partition(struct hv_call *c);
uint16_t hv_call_get_partition_property(struct hv_call *c);
uint16_t hv_call_set_partition_property(struct hv_call *c);
uint16_t hv_call_get_partition_id(struct hv_call *c);
uint16_t hv_call_get_next_child_partition(struct hv_call *c);
uint16_t hv_call_deposit_memory(struct hv_call *c);
uint16_t hv_call_withdraw_memory(struct hv_call *c);
uint16_t hv_call_get_memory_balance(struct hv_call *c);
uint16_t hv_call_map_gpa_pages(struct hv_call *c);
uint16_t hv_call_unmap_gpa_pages(struct hv_call *c);
uint16_t hv_call_create_vp(struct hv_call *c);
uint16_t hv_call_delete_vp(struct hv_call *c);
uint16_t hv_call_get_vp_registers(struct hv_call *c);
uint16_t hv_call_set_vp_registers(struct hv_call *c);
/* Handlers in port.c: ports, connections, PostMessage, SignalEvent. */
uint16_t hv_call_create_port(struct hv_call *c);
uint16_t hv_call_connect_port(struct hv_call *c);
uint16_t hv_call_delete_port(struct hv_call *c);
uint16_t hv_call_disconnect_port(struct hv_call *c);
uint16_t hv_call_post_message(struct hv_call *c);
uint16_t hv_call_signal_event(struct hv_call *c);
/* Handler in visibility.c: a child shows pages of its own to its parent. */
uint16_t hv_call_modify_host_visibility(struct hv_call *c);

/* ---- dirty.c: a child's dirty log (live migration's pre-copy rounds) ------------------------- */
/* Handler: read (and clear or set) the dirty state of a range of a child's GPA pages. */
uint16_t hv_call_get_gpa_pages_access_states(struct hv_call *c);
/* The core wrote SPA page pfn: set its bit in its owner's log (hv_page_mark_dirty calls this
 * only while some log exists). */
void hv_dirty_log_mark(struct hv_host *h, uint64_t pfn);
/* Page pfn now backs a GPA page of p (a new mapping): its contents there are new. */
void hv_dirty_log_mapped(struct hv_partition *p, uint64_t pfn);
/* A writable view of p's pages ends: its pages count as written once more. */
void hv_dirty_log_view_released(struct hv_host *h, struct hv_partition *p, const struct hv_grant *g);
/* HV_PARTITION_PROPERTY_GPA_PAGE_ACCESS_TRACKING: read it, and set it (decode then apply). */
uint64_t hv_dirty_tracking(const struct hv_partition *p);
uint16_t hv_dirty_set_tracking(struct hv_host *h, struct hv_partition *p, uint64_t value);
/* Partition teardown: the log goes with it. */
void hv_dirty_log_free(struct hv_host *h, struct hv_partition *p);

/* ---- migration.c and pager.c: the parent's bulk access, absent pages (post-copy) -------------- */
/* The child named by child_id if parent_id is its parent, else NULL. */
struct hv_partition *hv_child_of(struct hv_host *h, uint64_t parent_id, uint64_t child_id);
bool hv_page_is_zero(const uint8_t *page);
static inline bool hv_page_absent(const struct hv_host *h, uint64_t pfn)
{
    return __builtin_expect(h->absent_pages != 0, 0) && ((h->absent[pfn / 64] >> (pfn % 64)) & 1);
}
/* p touched absent page pfn at GPA page gpa_page: fetch it from the pager; false if that failed. */
bool hv_pager_fault(struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page, uint64_t pfn);
/* Page pfn of p is present now (fetched if it was absent); false if the fetch failed. */
bool hv_pager_present(struct hv_host *h, const struct hv_partition *p, uint64_t gpa_page, uint64_t pfn);
/* The parent wrote page pfn of p whole: it is no longer absent. */
void hv_pager_supplied(struct hv_host *h, struct hv_partition *p, uint64_t pfn);
/* Page pfn changes owner: it is no longer absent (called only when it is). */
void hv_pager_forget(struct hv_host *h, uint64_t pfn);
/* The absent marks, for the state digest (nothing while there are none). */
void hv_pager_digest(const struct hv_host *h, struct hv_digest *d);

/* Resolve a partition id named in a hypercall: SELF or the caller's own id gives the caller;
 * otherwise it must be a live child of the caller. NULL if not. */
struct hv_partition *hv_call_target(struct hv_call *c, uint64_t id, bool allow_self);

static inline uint64_t hv_load64(const uint8_t *p) { uint64_t v; __builtin_memcpy(&v, p, 8); return v; }
static inline uint32_t hv_load32(const uint8_t *p) { uint32_t v; __builtin_memcpy(&v, p, 4); return v; }
static inline void hv_store64(uint8_t *p, uint64_t v) { __builtin_memcpy(p, &v, 8); }

#endif /* HV_CORE_H */
