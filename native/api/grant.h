/* Grants: how a child's pages become reachable by its parent (the core's side of a VMBus GPADL).
 * Plain declarations: both C (core.h includes this file) and the cffi cdef. Called by the parent's
 * VMBus server through the host API; never reachable by a partition's hypercalls. */

/* Record a grant of `count` GPA pages of child `child_id` to its parent (the root), under the
 * child's GPADL id `grant_id`. Every page must be mapped in the child. While the grant lives its
 * pages cannot be unmapped, withdrawn or given to anyone else. Returns an HV_STATUS:
 * INVALID_PARTITION_ID (no such child), INVALID_PARAMETER (a page not mapped, a page twice,
 * count 0, an id in use), NO_RESOURCES (a limit would be passed or the process cannot map the
 * view: hv_grant_last_refusal says which). */
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

/* Why the last grant or own view was refused for want of resources (the call returned
 * NO_RESOURCES), so the caller can say exactly what ran out. */
enum hv_grant_limit {
    HV_GRANT_LIMIT_NONE = 0,
    HV_GRANT_LIMIT_CHILD_PAGES = 1,     /* the child's granted pages would pass grant_pages_per_child */
    HV_GRANT_LIMIT_CHILD_MAPPINGS = 2,  /* the partition's mappings would pass grant_mappings_per_child */
    HV_GRANT_LIMIT_HOST_MAPPINGS = 3,   /* all partitions' mappings would pass grant_mappings_per_host */
    HV_GRANT_LIMIT_PROCESS_MAPPINGS = 4 /* the process could not map the view (mmap failed: errno) */
};
struct hv_grant_refusal {
    uint32_t limit;               /* enum hv_grant_limit */
    int32_t error;                /* HV_GRANT_LIMIT_PROCESS_MAPPINGS: the errno of mmap */
    uint64_t partition_id;        /* the partition whose grant or view was refused */
    uint64_t have;                /* pages or mappings it (or the host) had */
    uint64_t want;                /* pages or mappings the refused one needed */
    uint64_t max;                 /* the limit */
};
int hv_grant_last_refusal(struct hv_host *h, struct hv_grant_refusal *out);

/* What a partition's grants and views cost now, with the limits (introspection). */
struct hv_grant_usage {
    uint64_t pages, pages_limit;          /* pages granted to its parent */
    uint64_t mappings, mappings_limit;    /* mappings its grants and own views cost */
    uint64_t host_mappings, host_mappings_limit; /* the same over all partitions */
};
int hv_grant_usage(struct hv_host *h, uint64_t partition_id, struct hv_grant_usage *out);

/* A view's address range, for a Python memoryview: the mapping stays while any export holds it.
 * Revoking the grant (or releasing the view) replaces its pages by zeros at once; the last of the
 * grant and its exports to go unmaps it. NULL if there is no such grant / view. */
struct hv_mapping;
struct hv_mapping *hv_grant_export(struct hv_host *h, uint64_t child_id, uint32_t grant_id, uint8_t **base,
                                   uint32_t *npages);
struct hv_mapping *hv_view_export(struct hv_host *h, uint64_t partition_id, uint32_t view_id, uint8_t **base,
                                  uint32_t *npages);
void hv_mapping_release(struct hv_mapping *m);

/* Table entries partition teardown has visited since the host booted (a work counter: it grows
 * linearly with what a deleted partition owned). */
uint64_t hv_teardown_visits(struct hv_host *h);
