/* storvsp.h: storvsp's per-request data plane in C, beside the core (drivers/storage/vsp.py is
 * the device; this is the part of it that runs per I/O).
 *
 * Division of work. Python keeps the vstor negotiation, every control operation, every SCSI
 * command that does not reach a medium, every refusal (it builds the refusal's text), flushes and
 * FUA writes, and anything this side does not take. This side takes READ/WRITE (10)/(16) SRBs in
 * GPA-direct packets that pass every check storvsp's Python path makes (_check_srb, the SCSI
 * decode, the direction), queues them with the due time the Python path computes, and at the due
 * time moves the data between the VHD (vhd_io.c) and the guest's host-visible pages
 * (hv_visible_copy) and writes the completion packet (hv_ring_write_packet).
 *
 *   hv_storvsp_submit  reads packet records (descriptor | header | payload, as hv_ring_read_batch
 *                      leaves them) from the start and queues each one it takes; it stops at the
 *                      first packet it does not take, which Python handles before calling again
 *                      with the rest. So requests are queued, and their timers armed, in exactly
 *                      the order the Python path arms them.
 *   hv_storvsp_complete  one request at its due time: SENT (completion written; *done says
 *                      whether to signal and the new write_index), UNSENT (data moved, counted;
 *                      Python sends done->packet itself: no ring given, or it was full), PYTHON
 *                      (nothing done: the VHD needs a table change, a page was hidden, the file
 *                      failed, the disk changed: Python executes the request by the reference path
 *                      from the slot, then frees it), WRITE (a write whose guest bytes are in the
 *                      scratch buffer, but the VHD needs a table change or failed: Python writes
 *                      them with its tables, then hv_storvsp_written completes it as SENT/UNSENT
 *                      do, or Python completes a failure itself), STALE (no such request).
 *
 * Invariants: nothing is written to the guest or the disk before every check of the step has
 * passed, except a VHD write that stopped part way for Python (which then writes the same bytes
 * again). Only the child's host-visible pages are reached, through the core's checks. */
#ifndef HV_STORVSP_H
#define HV_STORVSP_H

#include <stddef.h>
#include <stdint.h>

#include "vhd_io.h"

struct hv_host;

#include "api/storvsp.h"

#endif
