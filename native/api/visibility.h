/* Host visibility: pages a child shows its parent with HvCallModifySparseGpaPageHostVisibility (the
 * way an isolated guest shares its bounce buffers), and the parent's access to them. Plain
 * declarations: both C (core.h includes this file) and the cffi cdef. The calls below are the
 * parent's (through the host API); the hypercall itself is the child's. */

/* Make a view for the parent of `count` GPA pages of child `child_id`, under `view_id` (unique per
 * child among host-visible views), mapped contiguously. `access` is HV_HOST_VISIBILITY_READ_ONLY
 * (a read-only view) or HV_HOST_VISIBILITY_READ_WRITE; every page must be host-visible with at
 * least that access. Returns an HV_STATUS: INVALID_PARTITION_ID (no such child), INVALID_PARAMETER
 * (bad access, count 0, a page twice or not mapped, an id in use), ACCESS_DENIED (a page not
 * visible enough: *bad_page names it), NO_RESOURCES (a grant limit: hv_grant_last_refusal).
 * The view is pinned and accounted as a grant; it is revoked (its pages become zeros) the moment
 * the child makes one of its pages less visible than `access`. */
uint16_t hv_visible_view_create(struct hv_host *h, uint64_t child_id, uint32_t view_id, const uint64_t *gpa_pages,
                                uint32_t count, uint32_t access, uint64_t *bad_page);
/* End a view (INVALID_PARAMETER if there is none: it was released, or revoked by the child). */
uint16_t hv_visible_view_release(struct hv_host *h, uint64_t child_id, uint32_t view_id);
/* The view's address range for a Python memoryview (see hv_grant_export); *access gets its access.
 * NULL if there is no such view. */
struct hv_mapping *hv_visible_view_export(struct hv_host *h, uint64_t child_id, uint32_t view_id, uint8_t **base,
                                          uint32_t *npages, uint32_t *access);
/* The ids of a child's live host-visible views; returns how many there are. */
uint32_t hv_visible_view_ids(struct hv_host *h, uint64_t child_id, uint32_t *ids, uint32_t max);

/* Copy between `len` bytes at byte `offset` into the child's GPA pages `gpa_pages` (taken in list
 * order, as a GPA-direct range lists them) and buf, without a mapping: the parent's one-off access.
 * write != 0 stores buf into the pages (they must be read-write visible), else loads. Every page
 * is checked before a byte moves. Returns an HV_STATUS: INVALID_PARTITION_ID, INVALID_PARAMETER
 * (offset + len past the pages), ACCESS_DENIED (*bad_page not visible enough). */
uint16_t hv_visible_copy(struct hv_host *h, uint64_t child_id, const uint64_t *gpa_pages, uint32_t count,
                         uint64_t offset, uint8_t *buf, uint64_t len, int write, uint64_t *bad_page);
/* The first of `count` GPA pages of the child that is not host-visible with `access`: returns 1
 * and sets *bad_page, or 0 if all are. -1 if there is no such child. */
int hv_visible_check(struct hv_host *h, uint64_t child_id, const uint64_t *gpa_pages, uint32_t count,
                     uint32_t access, uint64_t *bad_page);

/* The child's host-visible pages (introspection): GPA page and visibility, in GPA order; returns
 * how many there are. */
uint64_t hv_host_visible_pages(struct hv_host *h, uint64_t child_id, uint64_t *gpas, uint8_t *visibility,
                               uint64_t max);
