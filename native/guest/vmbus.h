/* vmbus.h: the guest SDK's VMBus client: rings in Hyper-V's layout (ring.c, the same bytes as
 * vmbus/ring.py), channel-management messages (the same bytes as vmbus/protocol.py) and a
 * blocking client that connects, takes offers, creates a ring GPADL and opens a channel.
 */
#ifndef HVG_VMBUS_H
#define HVG_VMBUS_H

#include "hvguest.h"

/* ---- Rings (ring.c) ------------------------------------------------------------------------ */
#define HVG_RING_CONTROL 4096u
#define HVG_RING_DESC 16u
#define HVG_RING_TRAILER 8u
#define HVG_RING_FEAT_PENDING_SEND_SZ 1u
#define HVG_PKT_DATA_INBAND 6u
#define HVG_PKT_COMP 0xBu
#define HVG_PKT_COMPLETION_REQUESTED 1u

/* Results of ring calls: 0 success, negative errors. */
#define HVG_OK 0
#define HVG_E_EMPTY -1     /* read: nothing published */
#define HVG_E_FULL -2      /* write: does not fit now */
#define HVG_E_TOOBIG -3    /* write: can never fit; read: the caller's buffer is too small */
#define HVG_E_CORRUPT -4   /* the peer broke the ring's invariants; the ring is dead */
#define HVG_E_PROTOCOL -5  /* a host message that is short, unknown or refused */

/* One end of a ring over `size` bytes of memory: control page, then the data area. The index
 * this end owns is remembered as published and a different value found there is tampering, as
 * in vmbus/ring.py; any inconsistency sets `broken` and every later call fails. */
struct hvg_ring {
    u8 *base;
    u32 dsize;         /* data area bytes */
    u32 own;           /* write_index (outgoing) or read_index (incoming) as last published */
    u32 cursor;        /* incoming: where the next read starts (commit publishes it) */
    u8 adopted;        /* own/cursor hold the index found at the first call */
    u8 requested;      /* outgoing: pending_send_sz was set by a write that found the ring full */
    u8 broken;
};

struct hvg_packet {
    u16 type, flags, offset8, len8;
    u64 trans_id;
    u32 header_len;    /* bytes between the descriptor and the payload */
    u32 payload_len;   /* len8*8 - offset8*8: the payload as padded on the ring */
};

/* Initialise an end (nothing is written). `size` = control page + a data area multiple of 8. */
int hvg_ring_attach(struct hvg_ring *ring, void *mem, u32 size);
/* Zero the control page and set the feature bits (the owner of the memory does this once). */
void hvg_ring_reset(void *mem, u32 feature_bits);
/* Append one packet. *signal says whether the reader must be signalled. With request_space, a
 * packet that does not fit sets pending_send_sz to its size first (ring.py's semantics). */
int hvg_ring_write(struct hvg_ring *ring, u16 type, u16 flags, u64 trans_id, const void *header,
                   u32 header_len, const void *payload, u32 len, int request_space, int *signal);
/* Copy the next packet (descriptor excluded: header then payload) into buf, advance the cursor.
 * Returns HVG_E_EMPTY when nothing is there, HVG_E_TOOBIG (nothing consumed) if cap is short. */
int hvg_ring_read(struct hvg_ring *ring, struct hvg_packet *pkt, void *buf, u32 cap);
/* Publish the cursor as read_index; returns whether the writer must be signalled (1/0), or
 * HVG_E_CORRUPT. */
int hvg_ring_commit(struct hvg_ring *ring);
u32 hvg_ring_packet_size(u32 payload_len);

/* ---- Channel-management messages (vmbus.c) -------------------------------------------------- */
#define HVG_VMBUS_MSG_SINT 2u
#define HVG_VMBUS_CONNECTION_ID 1u
#define HVG_VMBUS_CONNECTION_ID_4 4u
#define HVG_VMBUS_VERSION_WIN8 0x00020004u
#define HVG_VMBUS_VERSION_WIN10_V5 0x00050000u
#define HVG_VMBUS_VERSION_WIN10_V5_3 0x00050003u
#define HVG_VMBUS_FIRST_GPADL 0xE1E10u

enum hvg_vmbus_msgtype {
    HVG_CHMSG_OFFER = 1, HVG_CHMSG_RESCIND = 2, HVG_CHMSG_REQUEST_OFFERS = 3,
    HVG_CHMSG_ALL_OFFERS_DELIVERED = 4, HVG_CHMSG_OPEN = 5, HVG_CHMSG_OPEN_RESULT = 6,
    HVG_CHMSG_CLOSE = 7, HVG_CHMSG_GPADL_HEADER = 8, HVG_CHMSG_GPADL_BODY = 9,
    HVG_CHMSG_GPADL_CREATED = 10, HVG_CHMSG_GPADL_TEARDOWN = 11, HVG_CHMSG_GPADL_TORNDOWN = 12,
    HVG_CHMSG_INITIATE_CONTACT = 14, HVG_CHMSG_VERSION_RESPONSE = 15, HVG_CHMSG_UNLOAD = 16,
};

/* Encoders: write one message into buf (240 bytes) and return its size. */
u32 hvg_msg_initiate_contact(u8 *buf, u32 version, u32 target_vcpu, u32 msg_sint);
u32 hvg_msg_request_offers(u8 *buf);
/* Message `index` of a GPADL of whole pages (0: GPADL_HEADER, then GPADL_BODY 1, 2, ...); 0
 * when the GPADL needs fewer messages. Splits as vmbus.protocol.split_gpadl does. */
u32 hvg_msg_gpadl(u8 *buf, u32 index, u32 relid, u32 gpadl_id, const u64 *pfns, u32 npfns);
u32 hvg_msg_open_channel(u8 *buf, u32 relid, u32 open_id, u32 gpadl_id, u32 target_vp,
                         u32 downstream_page_offset, const u8 *user_data, u32 user_len);
u32 hvg_msg_close_channel(u8 *buf, u32 relid);
u32 hvg_msg_gpadl_teardown(u8 *buf, u32 relid, u32 gpadl_id);

struct hvg_offer {
    u8 interface_id[16];   /* as on the wire: Microsoft's mixed-endian GUID */
    u8 instance_id[16];
    u32 relid;
    u32 connection_id;
    u16 flags;
};

/* ---- The client ----------------------------------------------------------------------------- */
#define HVG_VMBUS_MAX_OFFERS 16u

struct hvg_vmbus {
    u32 version;
    u32 msg_conn_id;
    u32 next_gpadl;
    u32 offer_count;
    struct hvg_offer offers[HVG_VMBUS_MAX_OFFERS];
    u32 messages_ignored;  /* host messages that were not the one awaited */
};

struct hvg_channel {
    u32 relid, connection_id, gpadl_id;
    struct hvg_ring out;   /* guest -> host: the GPADL's first pages */
    struct hvg_ring in;    /* host -> guest: from downstream_page_offset on */
};

/* Wait for the next VMBus message on SINT 2 (hlt between interrupts) and copy it out. */
u32 hvg_vmbus_wait(struct hvg_vmbus *bus, u8 *msg);
/* Negotiate the newest version the host accepts; 0 or HVG_E_PROTOCOL. */
int hvg_vmbus_connect(struct hvg_vmbus *bus);
/* REQUEST_OFFERS, then collect offers until ALLOFFERS_DELIVERED. */
int hvg_vmbus_request_offers(struct hvg_vmbus *bus);
const struct hvg_offer *hvg_vmbus_find(const struct hvg_vmbus *bus, const u8 class_id[16]);
/* Create a ring GPADL over `pages` pages at `mem` (page aligned), split at downstream_pages, and
 * open the channel; 0 or HVG_E_PROTOCOL (with the host's status in *status if not null). */
int hvg_vmbus_open(struct hvg_vmbus *bus, const struct hvg_offer *offer, struct hvg_channel *ch,
                   void *mem, u32 pages, u32 downstream_pages, u32 *status);
/* Send one in-band packet and signal the host if the ring rules say so. */
int hvg_channel_send(struct hvg_channel *ch, const void *payload, u32 len, u64 trans_id, u16 flags);
/* Receive one packet's payload (0 with HVG_E_EMPTY when none) and commit, signalling if asked. */
int hvg_channel_recv(struct hvg_channel *ch, struct hvg_packet *pkt, void *buf, u32 cap);

#endif
