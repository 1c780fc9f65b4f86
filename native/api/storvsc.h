/* storvsc's per-I/O path (native/storvsc.c): one call packs and sends an EXECUTE_SRB, one call
 * takes every completion a signal brought. Plain declarations: cffi reads this file as is. */

#define HV_STORVSC_EINVAL 1 /* bad arguments: pages outside the pool, CDB length, data length */
#define HV_STORVSC_DONE_SIZE 24
#define HV_STORVSC_DONE_OK 0  /* a good SRB completion: the compact fields are all there is */
#define HV_STORVSC_DONE_RAW 1 /* anything else kept: the caller decodes the record at `offset` */

/* What hv_storvsc_complete did (all outputs). */
struct hv_storvsc_result {
    uint32_t signal;   /* the host must be signalled (its pending_send_sz request is met) */
    uint32_t index;    /* read_index left published */
    uint32_t records;  /* completion records written to `done` */
    uint32_t raw;      /* how many of them are HV_STORVSC_DONE_RAW */
    uint32_t out_used; /* bytes of `scratch` holding the packets read (what RAW records point into) */
    uint32_t count;    /* packets read */
};

/* One EXECUTE_SRB to `lun`: `length` bytes through the bounce pages from first_page on
 * (consecutive; none when length is 0), `data` (data_len <= length bytes) copied to them first,
 * else zeros in every page. Returns 1, 0 if the packet does not fit now, or a negative error
 * (-HV_STORVSC_EINVAL, or ring.c's). */
int hv_storvsc_submit(uint8_t *ring, size_t ring_len, uint8_t *bounce, size_t bounce_len,
                      const uint64_t *pfns, uint32_t pool_pages, uint64_t trans_id, uint32_t lun,
                      uint32_t data_in, uint32_t length, uint32_t first_page, const uint8_t *cdb,
                      uint32_t cdb_len, const uint8_t *data, uint32_t data_len,
                      struct hv_ring_result *result);

/* Read every packet (up to done_cap / 24) into scratch (capacity bytes) and write a record to
 * `done` for each the driver must see. Returns the packets read or a negative ring error. */
int hv_storvsc_complete(uint8_t *ring, size_t ring_len, uint8_t *scratch, size_t capacity,
                        uint8_t *done, size_t done_cap, struct hv_storvsc_result *result);
