/* Grants: how a child's pages become reachable by its parent (the core's side of a VMBus GPADL).
 * Plain declarations: both C (core.h includes this file) and the cffi cdef. Called by the parent's
 * VMBus server through the host API; never reachable by a partition's hypercalls. */

/* Record a grant of `count` GPA pages of child `child_id` to its parent (the root), under the
 * child's GPADL id `grant_id`. Every page must be mapped in the child. While the grant lives its
 * pages cannot be unmapped, withdrawn or given to anyone else. Returns an HV_STATUS:
 * INVALID_PARTITION_ID (no such child), INVALID_PARAMETER (a page not mapped, a page twice,
 * count 0 or too large, an id in use), NO_RESOURCES (the child's grant total would exceed
 * its limit). */
uint16_t hv_grant_create(struct hv_host *h, uint64_t child_id, uint32_t grant_id, const uint64_t *gpa_pages,
                         uint32_t count);
/* End a grant; the parent can no longer reach its pages. INVALID_PARAMETER if unknown. */
uint16_t hv_grant_revoke(struct hv_host *h, uint64_t child_id, uint32_t grant_id);
/* The grant's pages mapped contiguously (NULL if there is no such grant); *npages gets its size. */
uint8_t *hv_grant_view(struct hv_host *h, uint64_t child_id, uint32_t grant_id, uint32_t *npages);
/* The SPA pages of a grant (introspection); returns the page count. */
uint32_t hv_grant_pages(struct hv_host *h, uint64_t child_id, uint32_t grant_id, uint64_t *pfns, uint32_t max);
/* Pages granted by a child in all (introspection). */
uint64_t hv_granted_pages(struct hv_host *h, uint64_t child_id);
/* The ids of a child's live grants (introspection); returns how many there are. */
uint32_t hv_grant_ids(struct hv_host *h, uint64_t child_id, uint32_t *ids, uint32_t max);

/* Own views: a partition's own pages mapped contiguously for its own ring code (a guest kernel's
 * direct map of its VMBus rings). Pinned like grants; they reach nothing the partition could not. */
uint16_t hv_view_create(struct hv_host *h, uint64_t partition_id, uint32_t view_id, const uint64_t *gpa_pages,
                        uint32_t count);
uint16_t hv_view_release(struct hv_host *h, uint64_t partition_id, uint32_t view_id);
uint8_t *hv_view_ptr(struct hv_host *h, uint64_t partition_id, uint32_t view_id, uint32_t *npages);
