/* storvsp.c: storvsp's READ/WRITE data plane in C: decode and queue on a signal, data and
 * completion at the due time (storvsp.h has the division of work with vsp.py and the rules). */
#define _GNU_SOURCE /* MAP_ANONYMOUS */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core.h"
#include "le.h"
#include "ring.h"
#include "storvsp.h"

/* The vstor wire format (drivers/storage/protocol.py has the layouts). */
#define OP_COMPLETE_IO 1u
#define OP_EXECUTE_SRB 3u
#define PKT_GPA_DIRECT 9u
#define PKT_COMP 0x0Bu
#define DATA_OUT 0u
#define DATA_IN 1u
#define DATA_UNKNOWN 2u
#define SRB_STATUS_SUCCESS 1u
#define MAX_PFN ((1ull << 40) - 1)
#define PAGE 4096u
#define BLOCK 512u
/* vmscsi_request field offsets */
#define R_LENGTH 0
#define R_PORT 4
#define R_PATH 5
#define R_TARGET 6
#define R_LUN 7
#define R_CDB_LENGTH 8
#define R_DATA_IN 10
#define R_TRANSFER 12
#define R_CDB 16
#define CDB_SIZE 16u
/* SCSI */
#define READ_10 0x28u
#define WRITE_10 0x2Au
#define READ_16 0x88u
#define WRITE_16 0x8Au
#define FUA 0x08u

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static uint64_t be64(const uint8_t *p) { return (uint64_t)be32(p) << 32 | be32(p + 4); }

/* The request slots are mapped zero-filled on demand rather than calloc'd: ~1.1 KiB each, 64 a
 * channel by default, and an idle disk never uses more than the first few (submit takes the
 * lowest free slot), so the pages of the others are never backed (calloc served them from the
 * heap and cleared them, ~0.07 MiB per VM of an idle host). Reading a slot never written reads
 * the zero page: in_use 0. */
static struct hv_storvsp_req *slots_new(uint32_t n)
{
    void *m = mmap(NULL, (size_t)n * sizeof(struct hv_storvsp_req), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return m == MAP_FAILED ? NULL : m;
}

static void slots_free(struct hv_storvsp_req *reqs, uint32_t n)
{
    if (reqs)
        munmap(reqs, (size_t)n * sizeof *reqs);
}

struct hv_storvsp *hv_storvsp_create(struct hv_host *h, uint64_t child_id, uint32_t max_outstanding,
                                     uint32_t max_transfer, uint64_t latency, uint64_t bandwidth, uint32_t nluns)
{
    if (!h || !max_outstanding || !bandwidth || nluns > HV_STORVSP_MAX_LUNS)
        return NULL;
    struct hv_storvsp *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    /* Requests longer than the PFNs a slot holds are left to Python: the scratch buffer never
     * needs to be longer than that. */
    uint64_t cap = (uint64_t)(HV_STORVSP_MAX_PFNS - 1) * PAGE;
    s->max_outstanding = max_outstanding;   /* before anything can fail: destroy unmaps by it */
    s->reqs = slots_new(max_outstanding);
    s->scratch = malloc(max_transfer < cap ? (max_transfer ? max_transfer : 1) : cap);
    if (!s->reqs || !s->scratch) {
        hv_storvsp_destroy(s);
        return NULL;
    }
    s->host = h, s->child_id = child_id;
    s->max_transfer = max_transfer, s->latency = latency, s->bandwidth = bandwidth, s->nluns = nluns;
    return s;
}

void hv_storvsp_destroy(struct hv_storvsp *s)
{
    if (!s)
        return;
    slots_free(s->reqs, s->max_outstanding);
    free(s->scratch);
    free(s);
}

/* The one range of a GPA-direct header [h, h + len), checked as protocol.decode_gpa_direct
 * checks it; 0 if the header is not exactly that (Python refuses it, or takes it otherwise). */
static int one_range(const uint8_t *h, uint32_t len, uint32_t *byte_count, uint32_t *byte_offset, uint32_t *npfns)
{
    if (len < 8 || le32(h + 4) != 1 || len < 8 + 16)
        return 0;
    uint32_t count = le32(h + 8), offset = le32(h + 12);
    if (count == 0 || offset >= PAGE)
        return 0;
    uint64_t n = ((uint64_t)offset + count + PAGE - 1) / PAGE;
    if (n > HV_STORVSP_MAX_PFNS - 1 || 16 + 8 * n > len)
        return 0;
    for (uint32_t i = 0; i < n; i++)
        if (le64(h + 16 + 8 * i) > MAX_PFN)
            return 0;
    *byte_count = count, *byte_offset = offset, *npfns = (uint32_t)n;
    return 1;
}

/* Decode one packet record into `r` if this plane takes it: every check of vsp.py's
 * _execute_srb, _check_srb and ScsiDisk.decode for a READ/WRITE, all passing. Changes nothing
 * but `r` (and reads the host-visibility marks). */
static int take(struct hv_storvsp *s, const uint8_t *rec, uint32_t reclen, struct hv_storvsp_req *r)
{
    uint32_t type = le16(rec), off = le16(rec + 2) * 8u;
    if (type != PKT_GPA_DIRECT || off < 16 || off > reclen || reclen - off < HV_STORVSP_PACKET_SIZE)
        return 0;
    const uint8_t *vp = rec + off;
    if (le32(vp) != OP_EXECUTE_SRB)
        return 0;
    const uint8_t *srb = vp + 12;
    uint32_t cdb_length = srb[R_CDB_LENGTH], data_in = srb[R_DATA_IN], transfer = le32(srb + R_TRANSFER);
    if (le16(srb + R_LENGTH) != HV_STORVSP_SRB_SIZE || cdb_length < 1 || cdb_length > CDB_SIZE
        || data_in > DATA_UNKNOWN || transfer > s->max_transfer)
        return 0;
    if (!one_range(rec + 16, off - 16, &r->byte_count, &r->byte_offset, &r->npfns) || r->byte_count < transfer)
        return 0;
    const uint8_t *pfns = rec + 16 + 16;
    for (uint32_t i = 0; i < r->npfns; i++)
        r->pfns[i] = le64(pfns + 8 * i);
    uint64_t bad;
    uint32_t access = data_in == DATA_IN ? HV_HOST_VISIBILITY_READ_WRITE : HV_HOST_VISIBILITY_READ_ONLY;
    if (hv_visible_check(s->host, s->child_id, r->pfns, r->npfns, access, &bad) != 0)
        return 0;
    if (s->in_use >= s->max_outstanding)
        return 0;   /* BUSY: Python answers (the caller adds its own requests to in_use) */
    uint32_t lun = srb[R_LUN];
    if (srb[R_PATH] || srb[R_TARGET] || lun >= s->nluns || !s->luns[lun].present || !s->luns[lun].disk)
        return 0;
    const struct hv_storvsp_lun *u = &s->luns[lun];
    const uint8_t *cdb = srb + R_CDB;
    uint64_t lba, blocks;
    int write;
    if ((cdb[0] == READ_10 || cdb[0] == WRITE_10) && cdb_length >= 10) {
        lba = be32(cdb + 2), blocks = be16(cdb + 7), write = cdb[0] == WRITE_10;
    } else if ((cdb[0] == READ_16 || cdb[0] == WRITE_16) && cdb_length >= 16) {
        lba = be64(cdb + 2), blocks = be32(cdb + 10), write = cdb[0] == WRITE_16;
    } else {
        return 0;
    }
    /* Zero blocks, out of range, read-only, FUA writes (a flush), overruns: Python's. */
    if (blocks == 0 || lba > u->blocks || blocks > u->blocks - lba || (write && (u->read_only || cdb[1] & FUA)))
        return 0;
    uint64_t length = blocks * BLOCK;
    if (length > transfer)
        return 0;
    if ((write && data_in == DATA_IN) || (!write && data_in == DATA_OUT))
        return 0;
    r->trans_id = le64(rec + 8), r->lun = lun, r->write = (uint32_t)write;
    r->offset = lba * BLOCK, r->length = (uint32_t)length;
    memcpy(r->srb, srb, HV_STORVSP_SRB_SIZE);
    return 1;
}

uint64_t hv_storage_link_cross(struct hv_storage_link *l, uint64_t now, uint64_t bytes)
{
    /* `bytes` leave when the link has sent what was queued before them, take ceil(bits / bandwidth)
     * ns on it and arrive `latency` later (the datacenter's links' rule, link.py). 128-bit: a
     * migration's gigabytes times 8e9 do not fit in 64 bits. */
    uint64_t start = l->busy_until > now ? l->busy_until : now;
    unsigned __int128 bits_ns = (unsigned __int128)bytes * 8u * 1000000000u;
    uint64_t xfer = l->bandwidth ? (uint64_t)((bits_ns + l->bandwidth - 1) / l->bandwidth) : 0;
    l->busy_until = start + xfer;
    l->requests++, l->bytes += bytes, l->busy_ns += xfer, l->queued_ns += start - now;
    return start + xfer + l->latency;
}

int hv_storvsp_submit(struct hv_storvsp *s, const uint8_t *records, size_t len, uint32_t count, uint64_t now,
                      uint32_t others, uint32_t *slots, uint64_t *dues, size_t *used)
{
    size_t pos = 0;
    uint32_t taken = 0;
    *used = 0;
    if (!s || !records)
        return 0;
    s->in_use += others;   /* Python's requests in service count against max_outstanding too */
    while (taken < count && len - pos >= 16) {
        uint32_t reclen = le16(records + pos + 4) * 8u;
        if (reclen < 16 || reclen > len - pos)
            break;
        uint32_t slot = 0;
        while (slot < s->max_outstanding && s->reqs[slot].in_use)
            slot++;
        if (slot == s->max_outstanding)
            break;
        struct hv_storvsp_req *r = &s->reqs[slot];
        if (!take(s, records + pos, reclen, r))
            break;
        /* The medium serves its requests in arrival order: this one starts when the last one
         * queued on the LUN ends (vsp.py's service_time: latency + ceil(bytes / bandwidth)). */
        struct hv_storvsp_lun *u = &s->luns[r->lun];
        /* A disk on a shared storage is reached over the host's link to it first. */
        uint64_t at = u->link ? hv_storage_link_cross(u->link, now, r->length) : now;
        uint64_t start = u->busy_until > at ? u->busy_until : at;
        uint64_t xfer = ((uint64_t)r->length * 1000000000ull + s->bandwidth - 1) / s->bandwidth;
        r->due = u->busy_until = start + s->latency + xfer;
        r->in_use = 1, r->handed = 0;
        s->in_use++;
        slots[taken] = slot, dues[taken] = r->due;
        taken++;
        pos += reclen;
    }
    s->in_use -= others;
    *used = pos;
    return (int)taken;
}

static void completion(const struct hv_storvsp_req *r, uint8_t *p)
{
    /* encode_srb_completion(srb, SUCCESS, GOOD, length, b""): NTSTATUS SUCCESS, no sense. */
    memset(p, 0, HV_STORVSP_PACKET_SIZE);
    put32(p, OP_COMPLETE_IO);
    uint8_t *q = p + 12;
    put16(q + R_LENGTH, HV_STORVSP_SRB_SIZE);
    q[2] = SRB_STATUS_SUCCESS;
    q[R_PORT] = r->srb[R_PORT], q[R_PATH] = r->srb[R_PATH], q[R_TARGET] = r->srb[R_TARGET];
    q[R_LUN] = r->srb[R_LUN], q[R_CDB_LENGTH] = r->srb[R_CDB_LENGTH], q[R_DATA_IN] = r->srb[R_DATA_IN];
    put32(q + R_TRANSFER, r->length);
}

static int finish(struct hv_storvsp *s, struct hv_storvsp_req *r, uint8_t *ring, size_t ring_len,
                  struct hv_storvsp_done *done);

int hv_storvsp_complete(struct hv_storvsp *s, uint32_t slot, uint8_t *ring, size_t ring_len,
                        struct hv_storvsp_done *done)
{
    if (!s || slot >= s->max_outstanding || !s->reqs[slot].in_use)
        return HV_STORVSP_STALE;
    struct hv_storvsp_req *r = &s->reqs[slot];
    struct hv_storvsp_lun *u = &s->luns[r->lun];
    done->lun = r->lun, done->write = r->write, done->trans_id = r->trans_id, done->signal = 0;
    if (r->handed || !u->disk)
        return HV_STORVSP_PYTHON;
    uint64_t moved = 0, bad;
    if (r->write) {
        if (hv_visible_copy(s->host, s->child_id, r->pfns, r->npfns, r->byte_offset, s->scratch, r->length, 0, &bad)
            != HV_STATUS_SUCCESS)
            return HV_STORVSP_PYTHON;
        if (hv_vhd_write(u->disk, r->offset, s->scratch, r->length, &moved) != HV_VHD_OK || moved != r->length) {
            /* Python writes it all (the same bytes) with its tables, from the scratch buffer */
            done->offset = r->offset, done->length = r->length;
            return HV_STORVSP_WRITE;
        }
    } else {
        if (hv_vhd_read(u->disk, r->offset, s->scratch, r->length, &moved) != HV_VHD_OK || moved != r->length)
            return HV_STORVSP_PYTHON;
        if (hv_visible_copy(s->host, s->child_id, r->pfns, r->npfns, r->byte_offset, s->scratch, r->length, 1, &bad)
            != HV_STATUS_SUCCESS)
            return HV_STORVSP_PYTHON;   /* a page hidden meanwhile: Python fails it, nothing moved */
    }
    return finish(s, r, ring, ring_len, done);
}

/* A request whose data moved: count it, free its slot, write its completion (SENT) or leave it
 * in done->packet (UNSENT: no ring given, or it does not fit now). */
static int finish(struct hv_storvsp *s, struct hv_storvsp_req *r, uint8_t *ring, size_t ring_len,
                  struct hv_storvsp_done *done)
{
    struct hv_storvsp_lun *u = &s->luns[r->lun];
    if (r->write)
        u->write_ops++, u->write_bytes += r->length;
    else
        u->read_ops++, u->read_bytes += r->length;
    s->completed++;
    completion(r, done->packet);
    r->in_use = 0;
    s->in_use--;
    if (!ring)
        return HV_STORVSP_UNSENT;
    struct hv_ring_result res;
    int rc = hv_ring_write_packet(ring, ring_len, NULL, 0, done->packet, HV_STORVSP_PACKET_SIZE, PKT_COMP, 0,
                                  r->trans_id, &res);
    if (rc != 1)
        return HV_STORVSP_UNSENT;   /* full, or a bad ring: Python's send decides, as always */
    done->signal = res.signal, done->index = res.index;
    return HV_STORVSP_SENT;
}

void hv_storvsp_release(struct hv_storvsp *s, uint32_t slot)
{
    if (s && slot < s->max_outstanding && s->reqs[slot].in_use) {
        s->reqs[slot].in_use = 0;
        s->in_use--;
    }
}

int hv_storvsp_written(struct hv_storvsp *s, uint32_t slot, uint8_t *ring, size_t ring_len,
                       struct hv_storvsp_done *done)
{
    if (!s || slot >= s->max_outstanding || !s->reqs[slot].in_use || !s->reqs[slot].write)
        return HV_STORVSP_STALE;
    done->signal = 0;
    return finish(s, &s->reqs[slot], ring, ring_len, done);
}
