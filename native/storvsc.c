/* storvsc.c: the guest storage driver's per-I/O path in one crossing each way, over the ring
 * calls of ring.c (drivers/storage/vsc.py is the caller and keeps the pure-Python reference).
 *
 * Submitting: hv_storvsc_submit fills the bounce pages (a write's data, or zeros so that a short
 * reply cannot show an older request's bytes), packs the vstor_packet with its vmscsi_request
 * and the one-range GPA-direct header naming those pages, and appends the packet with
 * hv_ring_write_packet: the same bytes drivers/storage/protocol.py's encode_srb_request and
 * encode_gpa_range give. A packet that does not fit writes nothing to the ring (the caller then
 * takes the reference path, which asks the host for room).
 *
 * Completing: hv_storvsc_complete reads every packet with hv_ring_read_batch into `scratch`
 * and writes one 24-byte record per packet the driver must look at:
 *     trans_id u64 | data_transfer_length u32 | offset u32 | kind u8 | srb_status u8 |
 *     scsi_status u8 | 5 zero bytes
 * A packet the reference path drops whatever the driver's state (neither a completion nor
 * in-band, shorter than a vstor_packet, an operation other than COMPLETE_IO) gets no record. A
 * good SRB completion (SRB SUCCESS, SCSI GOOD, no sense to parse) is HV_STORVSC_DONE_OK: its
 * fields are all the driver needs. Anything else (an initialization reply, an error with or
 * without sense) is HV_STORVSC_DONE_RAW, and `offset` says where the packet's record (as
 * hv_ring_read_batch writes it) starts in scratch, for the reference decoder.
 *
 * The host is not trusted: every field comes from the copy in scratch, which ring.c checked
 * (offset8 >= 2, offset8 <= len8, inside what was published); a corrupt ring is ring.c's error.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "le.h"
#include "ring.h"
#include "api/storvsc.h"

#define PAGE 4096u
#define VSTOR_PACKET_SIZE 64u
#define VSTOR_HEADER_SIZE 12u /* operation, flags, status */
#define OP_COMPLETE_IO 1u
#define OP_EXECUTE_SRB 3u
#define REQUEST_COMPLETION_FLAG 1u
#define REQUEST_SIZE 52u
#define SENSE_BUFFER_SIZE 20u
#define DATA_OUT 0u
#define DATA_IN 1u
#define SRB_FLAGS_DISABLE_SYNCH_TRANSFER 0x08u
#define SRB_FLAGS_DATA_IN 0x40u
#define SRB_FLAGS_DATA_OUT 0x80u
#define SRB_STATUS_SUCCESS 0x01u
#define SRB_STATUS_MASK 0x3Fu
#define SRB_STATUS_AUTOSENSE_VALID 0x80u
#define SCSI_GOOD 0u
#define PKT_COMP 0xBu
#define PKT_GPA_DIRECT 9u
#define INIT_TRANS_ID UINT64_C(0xFFFFFFFFFFFFFFFD) /* vsc.py's INIT_TRANS_ID: (1 << 64) - 3 */
#define MAX_PAGES 512u /* a range list of at most 2 MiB: more than any pool hvsim configures */

_Static_assert(sizeof(struct hv_storvsc_result) == 24, "hv_storvsc_result layout");


int hv_storvsc_submit(uint8_t *ring, size_t ring_len, uint8_t *bounce, size_t bounce_len,
                      const uint64_t *pfns, uint32_t pool_pages, uint64_t trans_id, uint32_t lun,
                      uint32_t data_in, uint32_t length, uint32_t first_page, const uint8_t *cdb,
                      uint32_t cdb_len, const uint8_t *data, uint32_t data_len,
                      struct hv_ring_result *result)
{
    /* Decode everything first: a refused call changes nothing, bounce pages included. */
    if (result == NULL || cdb == NULL || cdb_len < 1 || cdb_len > 16 || lun > 255 || data_in > 255
        || data_len > length || (data_len && data == NULL))
        return -HV_STORVSC_EINVAL;
    uint32_t npages = (uint32_t)(((uint64_t)length + PAGE - 1) / PAGE);
    if (npages > MAX_PAGES || (uint64_t)first_page + npages > pool_pages
        || (npages && (pfns == NULL || bounce == NULL
                       || (uint64_t)pool_pages * PAGE > bounce_len)))
        return -HV_STORVSC_EINVAL;

    uint8_t packet[VSTOR_PACKET_SIZE] = {0};
    put32(packet + 0, OP_EXECUTE_SRB);
    put32(packet + 4, REQUEST_COMPLETION_FLAG);
    uint8_t *req = packet + VSTOR_HEADER_SIZE; /* vmscsi_request */
    req[0] = REQUEST_SIZE;                    /* length u16 */
    req[7] = (uint8_t)lun;
    req[8] = (uint8_t)cdb_len;
    req[9] = SENSE_BUFFER_SIZE;
    req[10] = (uint8_t)data_in;
    put32(req + 12, length);             /* data_transfer_length */
    memcpy(req + 16, cdb, cdb_len); /* the cdb/sense union, zero padded */
    uint32_t flags = SRB_FLAGS_DISABLE_SYNCH_TRANSFER;
    if (data_in == DATA_IN)
        flags |= SRB_FLAGS_DATA_IN;
    else if (data_in == DATA_OUT)
        flags |= SRB_FLAGS_DATA_OUT;
    put32(req + 40, flags);                   /* srb_flags */
    put32(req + 44, 60);                      /* time_out_value */

    if (npages == 0)
        return hv_ring_write_packet(ring, ring_len, NULL, 0, packet, VSTOR_PACKET_SIZE,
                                    HV_RING_PKT_DATA_INBAND, HV_RING_FLAG_COMPLETION_REQUESTED,
                                    trans_id, result);

    /* The bounce pages, as the reference fills them: the data, else zeros for every page. */
    uint8_t *pages = bounce + (size_t)first_page * PAGE;
    if (data_len)
        memcpy(pages, data, data_len);
    else
        memset(pages, 0, (size_t)npages * PAGE);

    /* One range: gpa header (reserved 0, range count 1), byte_count, byte_offset 0, the PFNs. */
    uint8_t header[16 + 8 * MAX_PAGES];
    put32(header + 0, 0);
    put32(header + 4, 1);
    put32(header + 8, length);
    put32(header + 12, 0);
    for (uint32_t i = 0; i < npages; i++)
        put64(header + 16 + 8 * i, pfns[first_page + i]);
    return hv_ring_write_packet(ring, ring_len, header, 16 + 8 * npages, packet, VSTOR_PACKET_SIZE,
                                PKT_GPA_DIRECT, HV_RING_FLAG_COMPLETION_REQUESTED, trans_id,
                                result);
}

int hv_storvsc_complete(uint8_t *ring, size_t ring_len, uint8_t *scratch, size_t capacity,
                        uint8_t *done, size_t done_cap, struct hv_storvsc_result *result)
{
    if (result == NULL || (done == NULL && done_cap))
        return -HV_STORVSC_EINVAL;
    memset(result, 0, sizeof *result);
    /* Every packet takes at least 24 ring bytes and gets at most one 24-byte record: records
     * for as many packets as fit `done`. */
    uint32_t max_packets = (uint32_t)(done_cap / HV_STORVSC_DONE_SIZE < INT32_MAX
                                      ? done_cap / HV_STORVSC_DONE_SIZE : INT32_MAX);
    struct hv_ring_result rr;
    int n = hv_ring_read_batch(ring, ring_len, scratch, capacity, max_packets, &rr);
    if (n < 0)
        return n;
    result->signal = rr.signal;
    result->index = rr.index;
    result->out_used = rr.out_used;
    result->count = (uint32_t)n;

    uint32_t pos = 0, records = 0, raw = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *rec = scratch + pos;
        uint32_t type = le16(rec), offset8 = le16(rec + 2), len8 = le16(rec + 4);
        uint64_t trans_id = le64(rec + 8);
        uint32_t at = pos;
        pos += len8 * HV_RING_ALIGN;
        /* ring.c checked 2 <= offset8 <= len8: the payload is [offset8*8, len8*8). */
        if (type != PKT_COMP && type != HV_RING_PKT_DATA_INBAND)
            continue;
        if ((len8 - offset8) * HV_RING_ALIGN < VSTOR_PACKET_SIZE)
            continue;
        const uint8_t *vp = rec + offset8 * HV_RING_ALIGN;
        if (le32(vp) != OP_COMPLETE_IO)
            continue;
        const uint8_t *req = vp + VSTOR_HEADER_SIZE;
        uint8_t srb_status = req[2], scsi_status = req[3], sense_len = req[9];
        int good = trans_id != INIT_TRANS_ID && (srb_status & SRB_STATUS_MASK) == SRB_STATUS_SUCCESS
                   && scsi_status == SCSI_GOOD
                   && !((srb_status & SRB_STATUS_AUTOSENSE_VALID) && sense_len);
        uint8_t *out = done + (size_t)records * HV_STORVSC_DONE_SIZE;
        memset(out, 0, HV_STORVSC_DONE_SIZE);
        put64(out, trans_id);
        put32(out + 8, le32(req + 12)); /* data_transfer_length */
        put32(out + 12, at);
        out[16] = good ? HV_STORVSC_DONE_OK : HV_STORVSC_DONE_RAW;
        out[17] = srb_status;
        out[18] = scsi_status;
        records++;
        raw += !good;
    }
    result->records = records;
    result->raw = raw;
    return n;
}
