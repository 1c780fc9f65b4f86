/* vmbus.c: the guest SDK's VMBus client: channel-management messages encoded and decoded as
 * vmbus/protocol.py lays them out, and a blocking client (connect, offers, ring GPADL, open,
 * send/receive on the channel's rings) for kernels with one VP that wait with hlt.
 *
 * Messages go out with PostMessage (type 1) on the message connection and come in on SINT 2's
 * slot of the message page; offsets below include the 8-byte header (msgtype u32, padding u32).
 * What the host sends is read only from the private copy hvg_vmbus_wait made, and checked for
 * size before any field is used.
 */
#include "vmbus.h"

/* Newest first, as vmbus.protocol.SUPPORTED_VERSIONS. */
static const u32 versions[] = {0x00050003u, 0x00050002u, 0x00050001u, 0x00050000u,
                               0x00040001u, 0x00040000u, 0x00030000u, 0x00020004u};

#define GPADL_HEADER_WORDS 27u /* (240 - 20) / 8: the range word and 26 PFNs */
#define GPADL_BODY_WORDS 28u   /* (240 - 16) / 8 */
#define OFFER_SIZE 196u
#define USER_DATA_SIZE 120u

static void put16(u8 *p, u16 v) { memcpy(p, &v, 2); }
static void put32(u8 *p, u32 v) { memcpy(p, &v, 4); }
static void put64(u8 *p, u64 v) { memcpy(p, &v, 8); }
static u16 get16(const u8 *p) { u16 v; memcpy(&v, p, 2); return v; }
static u32 get32(const u8 *p) { u32 v; memcpy(&v, p, 4); return v; }

static u32 header(u8 *buf, u32 type, u32 size)
{
    memset(buf, 0, size);
    put32(buf, type);
    return size;
}

u32 hvg_msg_initiate_contact(u8 *buf, u32 version, u32 target_vcpu, u32 msg_sint)
{
    u32 size = header(buf, HVG_CHMSG_INITIATE_CONTACT, 40);
    put32(buf + 8, version);
    put32(buf + 12, target_vcpu);
    /* From 5.0 on the interrupt page word is msg_sint u8, msg_vtl u8, feature flags u32 @20. */
    if (version >= HVG_VMBUS_VERSION_WIN10_V5)
        put64(buf + 16, msg_sint & 0xFFu);
    return size;
}

u32 hvg_msg_request_offers(u8 *buf)
{
    return header(buf, HVG_CHMSG_REQUEST_OFFERS, 8);
}

/* The range buffer of a GPADL of whole pages is one range word (byte_count | byte_offset << 32,
 * offset 0) then the PFNs; word i of it: */
static u64 gpadl_word(u32 i, const u64 *pfns, u32 npfns)
{
    return i == 0 ? (u64)npfns * HVG_PAGE_SIZE : pfns[i - 1];
}

u32 hvg_msg_gpadl(u8 *buf, u32 index, u32 relid, u32 gpadl_id, const u64 *pfns, u32 npfns)
{
    u32 words = npfns + 1u, first, count, size;
    if (index == 0) {
        count = words < GPADL_HEADER_WORDS ? words : GPADL_HEADER_WORDS;
        size = header(buf, HVG_CHMSG_GPADL_HEADER, 20u + 8u * count);
        put32(buf + 8, relid);
        put32(buf + 12, gpadl_id);
        put16(buf + 16, (u16)(8u * words)); /* range_buflen: the whole buffer, in bytes */
        put16(buf + 18, 1);                 /* rangecount */
        for (u32 i = 0; i < count; i++)
            put64(buf + 20 + 8 * i, gpadl_word(i, pfns, npfns));
        return size;
    }
    first = GPADL_HEADER_WORDS + (index - 1u) * GPADL_BODY_WORDS;
    if (first >= words)
        return 0;
    count = words - first < GPADL_BODY_WORDS ? words - first : GPADL_BODY_WORDS;
    size = header(buf, HVG_CHMSG_GPADL_BODY, 16u + 8u * count);
    put32(buf + 8, index); /* msgnumber, from 1 */
    put32(buf + 12, gpadl_id);
    for (u32 i = 0; i < count; i++)
        put64(buf + 16 + 8 * i, gpadl_word(first + i, pfns, npfns));
    return size;
}

u32 hvg_msg_open_channel(u8 *buf, u32 relid, u32 open_id, u32 gpadl_id, u32 target_vp,
                         u32 downstream_page_offset, const u8 *user_data, u32 user_len)
{
    u32 size = header(buf, HVG_CHMSG_OPEN, 148);
    put32(buf + 8, relid);
    put32(buf + 12, open_id);
    put32(buf + 16, gpadl_id);
    put32(buf + 20, target_vp);
    put32(buf + 24, downstream_page_offset);
    if (user_len) /* user_data may be null when there is none */
        memcpy(buf + 28, user_data, user_len < USER_DATA_SIZE ? user_len : USER_DATA_SIZE);
    return size;
}

u32 hvg_msg_close_channel(u8 *buf, u32 relid)
{
    u32 size = header(buf, HVG_CHMSG_CLOSE, 12);
    put32(buf + 8, relid);
    return size;
}

u32 hvg_msg_gpadl_teardown(u8 *buf, u32 relid, u32 gpadl_id)
{
    u32 size = header(buf, HVG_CHMSG_GPADL_TEARDOWN, 16);
    put32(buf + 8, relid);
    put32(buf + 12, gpadl_id);
    return size;
}

/* ---- the client ------------------------------------------------------------------------------ */

static u16 post(struct hvg_vmbus *bus, u32 connection_id, const u8 *msg, u32 size)
{
    u16 status;
    /* The port's 16 buffers may be in use while the host catches up: the hypervisor frees them
     * as the parent reads, so wait for an interrupt and try again (Linux retries too). */
    while ((status = hvg_post_message(connection_id, HVG_MESSAGE_TYPE_VMBUS, msg, size)) ==
           HVG_STATUS_INSUFFICIENT_BUFFERS)
        hvg_sti_hlt();
    (void)bus;
    return status;
}

u32 hvg_vmbus_wait(struct hvg_vmbus *bus, u8 *msg)
{
    struct hvg_message m;
    for (;;) {
        hvg_cli();
        if (hvg_message_take(HVG_VMBUS_MSG_SINT, &m)) {
            hvg_sti();
            u32 size = m.payload_size <= HVG_MESSAGE_PAYLOAD ? m.payload_size : HVG_MESSAGE_PAYLOAD;
            if (m.type == HVG_MESSAGE_TYPE_VMBUS && size >= 8u) {
                memset(msg, 0, HVG_MESSAGE_PAYLOAD);
                memcpy(msg, m.payload, size);
                return size;
            }
            bus->messages_ignored++;
            continue;
        }
        hvg_sti_hlt(); /* the SINT 2 interrupt wakes it */
    }
}

/* Wait for a message of `type` that is at least `min_size` bytes; others are counted and dropped
 * (a client with one request in flight has nothing else to do with them). */
static u32 expect(struct hvg_vmbus *bus, u8 *msg, u32 type, u32 min_size)
{
    for (;;) {
        u32 size = hvg_vmbus_wait(bus, msg);
        if (get32(msg) == type && size >= min_size)
            return size;
        bus->messages_ignored++;
    }
}

int hvg_vmbus_connect(struct hvg_vmbus *bus)
{
    u8 msg[HVG_MESSAGE_PAYLOAD];
    memset(bus, 0, sizeof *bus);
    bus->next_gpadl = HVG_VMBUS_FIRST_GPADL;
    for (u32 i = 0; i < sizeof versions / sizeof versions[0]; i++) {
        u32 v = versions[i];
        u32 size = hvg_msg_initiate_contact(msg, v, 0, HVG_VMBUS_MSG_SINT);
        u32 conn = v >= HVG_VMBUS_VERSION_WIN10_V5 ? HVG_VMBUS_CONNECTION_ID_4 : HVG_VMBUS_CONNECTION_ID;
        if (post(bus, conn, msg, size) != HVG_STATUS_SUCCESS)
            return HVG_E_PROTOCOL;
        expect(bus, msg, HVG_CHMSG_VERSION_RESPONSE, 16);
        if (msg[8] == 0)
            continue; /* not supported: try the next older one */
        if (msg[9] != 0)
            return HVG_E_PROTOCOL; /* connection_state: the host failed the connection */
        u32 conn_id = get32(msg + 12);
        if (v >= HVG_VMBUS_VERSION_WIN10_V5 && conn_id == 0)
            return HVG_E_PROTOCOL;
        bus->version = v;
        bus->msg_conn_id = v >= HVG_VMBUS_VERSION_WIN10_V5 ? conn_id : HVG_VMBUS_CONNECTION_ID;
        return HVG_OK;
    }
    return HVG_E_PROTOCOL;
}

int hvg_vmbus_request_offers(struct hvg_vmbus *bus)
{
    u8 msg[HVG_MESSAGE_PAYLOAD];
    if (post(bus, bus->msg_conn_id, msg, hvg_msg_request_offers(msg)) != HVG_STATUS_SUCCESS)
        return HVG_E_PROTOCOL;
    bus->offer_count = 0;
    for (;;) {
        u32 size = hvg_vmbus_wait(bus, msg);
        u32 type = get32(msg);
        if (type == HVG_CHMSG_ALL_OFFERS_DELIVERED)
            return HVG_OK;
        if (type != HVG_CHMSG_OFFER || size < OFFER_SIZE || bus->offer_count == HVG_VMBUS_MAX_OFFERS) {
            bus->messages_ignored++;
            continue;
        }
        struct hvg_offer *o = &bus->offers[bus->offer_count++];
        memcpy(o->interface_id, msg + 8, 16);
        memcpy(o->instance_id, msg + 24, 16);
        o->flags = get16(msg + 56);
        o->relid = get32(msg + 184);
        o->connection_id = get32(msg + 192);
    }
}

const struct hvg_offer *hvg_vmbus_find(const struct hvg_vmbus *bus, const u8 class_id[16])
{
    for (u32 i = 0; i < bus->offer_count; i++)
        if (memcmp(bus->offers[i].interface_id, class_id, 16) == 0)
            return &bus->offers[i];
    return 0;
}

#define MAX_RING_PAGES 128u

int hvg_vmbus_open(struct hvg_vmbus *bus, const struct hvg_offer *offer, struct hvg_channel *ch,
                   void *mem, u32 pages, u32 downstream_pages, u32 *status)
{
    u8 msg[HVG_MESSAGE_PAYLOAD];
    u64 pfns[MAX_RING_PAGES];
    u32 dummy;
    if (!status)
        status = &dummy;
    *status = 0;
    if (pages > MAX_RING_PAGES || downstream_pages < 2 || pages - downstream_pages < 2 ||
        downstream_pages > pages)
        return HVG_E_TOOBIG;
    memset(ch, 0, sizeof *ch);
    ch->relid = offer->relid;
    ch->connection_id = offer->connection_id;
    ch->gpadl_id = bus->next_gpadl++;
    u8 *base = mem;
    /* Both rings start empty, unmasked, with pending_send_sz honoured (as Linux sets them). */
    hvg_ring_reset(base, HVG_RING_FEAT_PENDING_SEND_SZ);
    hvg_ring_reset(base + downstream_pages * HVG_PAGE_SIZE, HVG_RING_FEAT_PENDING_SEND_SZ);
    for (u32 i = 0; i < pages; i++)
        pfns[i] = (hvg_gpa(base) >> HVG_PAGE_SHIFT) + i;
    for (u32 i = 0;; i++) {
        u32 size = hvg_msg_gpadl(msg, i, ch->relid, ch->gpadl_id, pfns, pages);
        if (!size)
            break;
        if (post(bus, bus->msg_conn_id, msg, size) != HVG_STATUS_SUCCESS)
            return HVG_E_PROTOCOL;
    }
    for (;;) {
        expect(bus, msg, HVG_CHMSG_GPADL_CREATED, 20);
        if (get32(msg + 8) == ch->relid && get32(msg + 12) == ch->gpadl_id)
            break;
        bus->messages_ignored++;
    }
    if ((*status = get32(msg + 16)) != 0)
        return HVG_E_PROTOCOL;
    u32 size = hvg_msg_open_channel(msg, ch->relid, ch->relid, ch->gpadl_id, 0, downstream_pages, 0, 0);
    if (post(bus, bus->msg_conn_id, msg, size) != HVG_STATUS_SUCCESS)
        return HVG_E_PROTOCOL;
    for (;;) {
        expect(bus, msg, HVG_CHMSG_OPEN_RESULT, 20);
        if (get32(msg + 8) == ch->relid && get32(msg + 12) == ch->relid)
            break;
        bus->messages_ignored++;
    }
    if ((*status = get32(msg + 16)) != 0)
        return HVG_E_PROTOCOL;
    hvg_ring_attach(&ch->out, base, downstream_pages * HVG_PAGE_SIZE);
    hvg_ring_attach(&ch->in, base + downstream_pages * HVG_PAGE_SIZE,
                    (pages - downstream_pages) * HVG_PAGE_SIZE);
    return HVG_OK;
}

int hvg_channel_send(struct hvg_channel *ch, const void *payload, u32 len, u64 trans_id, u16 flags)
{
    int signal;
    int rc = hvg_ring_write(&ch->out, HVG_PKT_DATA_INBAND, flags, trans_id, 0, 0, payload, len, 0,
                            &signal);
    if (rc == HVG_OK && signal)
        hvg_signal_event(ch->connection_id, 0);
    return rc;
}

int hvg_channel_recv(struct hvg_channel *ch, struct hvg_packet *pkt, void *buf, u32 cap)
{
    int rc = hvg_ring_read(&ch->in, pkt, buf, cap);
    if (rc != HVG_OK)
        return rc;
    int signal = hvg_ring_commit(&ch->in);
    if (signal < 0)
        return signal;
    if (signal)
        hvg_signal_event(ch->connection_id, 0);
    return HVG_OK;
}
