/* Live migration's side of the core: the parent's bulk access to a child's memory (migration.c)
 * and absent pages with the parent's pager, for post-copy (pager.c). Plain declarations: both C
 * (core.h includes this file) and the cffi cdef. Called by the parent's migration code through the
 * host API; never reachable by a partition's hypercalls.
 *
 * Every call names the caller (`parent_id`) and the child; the caller must be the child's parent
 * (INVALID_PARTITION_ID otherwise, as a hypercall naming a partition that is not its child gets).
 * A call decodes every page before it copies a byte: a page the child does not map refuses the
 * whole call with INVALID_PARAMETER and names the page in *bad_page, and nothing changed. */

/* Copy `count` pages of the child, GPA pages gpa_pages[i], into out (count * 4096 bytes, in order). */
uint16_t hv_child_read_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, const uint64_t *gpa_pages,
                             uint64_t count, uint8_t *out, uint64_t *bad_page);
/* The same for the GPA pages first .. first + count - 1. */
uint16_t hv_child_read_range(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                             uint64_t count, uint8_t *out, uint64_t *bad_page);
/* Store data (count * 4096 bytes) into the child's GPA pages gpa_pages[i]: writes of the core, so
 * they set the child's dirty log like any other, and a page written whole is no longer absent. */
uint16_t hv_child_write_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, const uint64_t *gpa_pages,
                              uint64_t count, const uint8_t *data, uint64_t *bad_page);
uint16_t hv_child_write_range(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                              uint64_t count, const uint8_t *data, uint64_t *bad_page);
/* The GPA pages of first .. first + count - 1 that the child maps and that may hold a byte other
 * than zero (absent pages among them: their contents are not here to look at), in order, into out
 * (room for `count`); *found gets how many. Pages the core never wrote are not read at all. */
uint16_t hv_child_nonzero_pages(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                                uint64_t count, uint64_t *out, uint64_t *found);

/* The dirty log read in one crossing (dirty.c): HvCallGetGpaPagesAccessStates with `flags` over
 * GPA pages first .. first + count - 1 of child `child_id`, issued by VP vp_index of partition
 * caller_id with its input block at in_gpa and its output at out_gpa, invocation after invocation
 * as the typed wrapper issues them (each through hv_hypercall, with its checks and costs). The
 * pages reported dirty go to out (room for `count`), *found how many; returns the first failing
 * status, or SUCCESS. */
uint16_t hv_dirty_log_read(struct hv_host *h, uint64_t caller_id, uint32_t vp_index, uint64_t in_gpa,
                           uint64_t out_gpa, uint64_t child_id, uint64_t first, uint64_t count, uint64_t flags,
                           uint64_t *out, uint64_t *found);

/* ---- absent pages (post-copy) ---- */

/* How the core asks the parent for an absent page: fill `page` (4096 bytes) with GPA page
 * `gpa_page` of partition `partition_id`, put how long the fetch took (simulated ns) in *stall_ns
 * and return 0; or return non-zero (the fetch failed: the access fails as a bad GPA would).
 * `vp_index` is the child's VP the access is made for, UINT32_MAX if the core does not know one:
 * the callback may name one in *vp_out (it starts as vp_index). The callback must not call the
 * core: a fault while one is being served fails. */
typedef int (*hv_pager_fn)(struct hv_host *h, uint64_t partition_id, uint64_t gpa_page, uint32_t vp_index,
                           uint8_t *page, uint64_t *stall_ns, uint32_t *vp_out);
/* The host's pager callback (NULL: none; every fault fails). */
void hv_pager_install(struct hv_host *h, hv_pager_fn fn);
/* Mark GPA pages first .. first + count - 1 of the child absent: each must be mapped
 * (INVALID_PARAMETER) and neither pinned by a grant or view nor host-visible (OBJECT_IN_USE:
 * the parent reaches those pages without the core, so nothing could fetch them first). */
uint16_t hv_child_set_absent(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                             uint64_t count, uint64_t *bad_page);
/* Supply one absent page (or overwrite a present one): hv_child_write_pages of one page. */
uint16_t hv_child_page_in(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t gpa_page,
                          const uint8_t *data);
/* Which of GPA pages first .. first + count - 1 are absent: one byte each into out (1: absent). */
uint16_t hv_child_absent_map(struct hv_host *h, uint64_t parent_id, uint64_t child_id, uint64_t first,
                             uint64_t count, uint8_t *out);

struct hv_pager_stats {
    uint64_t absent;              /* its pages absent now */
    uint64_t faults;              /* accesses that found an absent page and asked the pager */
    uint64_t failures;            /* of those, how many the pager failed (the access failed) */
    uint64_t stall_ns;            /* simulated time its VPs were stalled waiting for pages */
    uint64_t unattributed;        /* faults with no VP of it to stall (the parent's or a device's access) */
};
/* A partition's absent pages and faults (introspection): 0, or -1 if there is no such partition. */
int hv_pager_stats(struct hv_host *h, uint64_t partition_id, struct hv_pager_stats *out);
