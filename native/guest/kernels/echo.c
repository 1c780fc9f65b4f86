/* echo: a kernel that drives a VMBus channel from C: it connects to VMBus, finds the echo
 * device's offer (drivers/example), opens its channel over a ring GPADL of its own pages,
 * negotiates the protocol version and exchanges echo requests with the Python echo VSP,
 * checking each reply. Packet formats are drivers/example/protocol.py's. */
#include "vmbus.h"

#define VMBUS_VECTOR 0x32u
#define RING_PAGES 8u        /* 4 pages each way: control page + 3 data pages */
#define ECHOES 4u
#define PATTERNED 60u
#define MAX_DATA 3072u       /* the echo protocol's largest request */

#define ECHO_VERSION_2 0x00020000u
#define VERSION_REQUEST 1u
#define VERSION_RESPONSE 2u
#define ECHO_REQUEST 3u
#define ECHO_REPLY 4u

/* 6e0d8e9f-5f4c-4d3a-9a0e-8f2b7c1d0e11 as on the wire (Microsoft's mixed-endian GUID). */
static const u8 echo_class[16] = {0x9f, 0x8e, 0x0d, 0x6e, 0x4c, 0x5f, 0x3a, 0x4d,
                                  0x9a, 0x0e, 0x8f, 0x2b, 0x7c, 0x1d, 0x0e, 0x11};

static u8 ring_pages[RING_PAGES * HVG_PAGE_SIZE] HVG_PAGE_ALIGNED;
static struct hvg_vmbus bus;
static struct hvg_channel channel;
static u8 packet[4096];
static u32 request[(12 + MAX_DATA + 3) / 4]; /* type, status, length, data */
static u8 *const data = (u8 *)&request[3];

static void on_vmbus(u32 vector) { (void)vector; } /* waking the hlt is all it is for */

/* The next packet on the channel (hlt until the host signals); its payload is at `packet`. */
static u32 receive(struct hvg_packet *pkt)
{
    for (;;) {
        hvg_cli();
        hvg_event_take(HVG_VMBUS_MSG_SINT, channel.relid); /* re-arm the edge before reading */
        int rc = hvg_channel_recv(&channel, pkt, packet, sizeof packet);
        if (rc == HVG_OK) {
            hvg_sti();
            if (pkt->header_len)
                memmove(packet, packet + pkt->header_len, pkt->payload_len);
            return pkt->payload_len;
        }
        if (rc != HVG_E_EMPTY) {
            hvg_printf("echo: ring error %d\n", rc);
            hvg_exit(2);
        }
        hvg_sti_hlt();
    }
}

static void fail(const char *what)
{
    hvg_printf("echo: %s\n", what);
    hvg_exit(1);
}

/* Send `len` bytes of `data` as an echo request and check that the reply repeats them. */
static void echo(u64 trans_id, u32 len)
{
    struct hvg_packet pkt;
    const u32 *reply = (const u32 *)packet;
    request[0] = ECHO_REQUEST;
    request[1] = 0;
    request[2] = len;
    if (hvg_channel_send(&channel, request, 12 + len, trans_id, HVG_PKT_COMPLETION_REQUESTED) != HVG_OK)
        fail("echo request not sent");
    u32 got = receive(&pkt);
    if (pkt.trans_id != trans_id || got < 12 + len || reply[0] != ECHO_REPLY || reply[1] != 0 ||
        reply[2] != len || memcmp(packet + 12, data, len) != 0)
        fail("bad echo reply");
}

void kmain(void)
{
    struct hvg_packet pkt;
    u32 status;

    hvg_console_init();
    hvg_hypercall_init();
    hvg_synic_init();
    hvg_set_handler(VMBUS_VECTOR, on_vmbus);
    hvg_sint_enable(HVG_VMBUS_MSG_SINT, VMBUS_VECTOR);

    if (hvg_vmbus_connect(&bus) != HVG_OK)
        fail("VMBus connection refused");
    hvg_printf("echo: VMBus version %x, message connection %u\n", bus.version, bus.msg_conn_id);
    if (hvg_vmbus_request_offers(&bus) != HVG_OK)
        fail("no offers");
    const struct hvg_offer *offer = hvg_vmbus_find(&bus, echo_class);
    if (!offer)
        fail("no echo device offered");
    hvg_printf("echo: %u offers, echo device at relid %u connection %u\n", bus.offer_count,
               offer->relid, offer->connection_id);
    if (hvg_vmbus_open(&bus, offer, &channel, ring_pages, RING_PAGES, RING_PAGES / 2, &status) != HVG_OK) {
        hvg_printf("echo: open failed, status %x\n", status);
        hvg_exit(1);
    }
    hvg_printf("echo: channel open, ring GPADL %x\n", channel.gpadl_id);

    request[0] = VERSION_REQUEST;
    request[1] = 0;
    request[2] = ECHO_VERSION_2;
    request[3] = 0;
    hvg_channel_send(&channel, request, 16, 1, HVG_PKT_COMPLETION_REQUESTED);
    receive(&pkt);
    u32 *reply = (u32 *)packet;
    if (pkt.trans_id != 1 || reply[0] != VERSION_RESPONSE || reply[2] != ECHO_VERSION_2 || !reply[3])
        fail("version refused");
    hvg_printf("echo: version %x accepted\n", reply[2]);

    static const char text[] = "hello from C #";
    u32 len = sizeof text; /* the digit replaces the terminator */
    for (u32 i = 0; i < ECHOES; i++) {
        memcpy(data, text, len - 1);
        data[len - 1] = (u8)('0' + i);
        echo(100 + i, len);
        hvg_printf("echo: reply %u: ", i);
        for (u32 k = 0; k < len; k++)
            hvg_putc((char)packet[12 + k]);
        hvg_putc('\n');
    }
    /* Then every size class up to the protocol's largest, with a pattern that differs per
     * request: 12 KiB of ring each way, so the packets wrap around both rings many times. */
    for (u32 i = 0; i < PATTERNED; i++) {
        len = i * 397u % (MAX_DATA + 1u);
        for (u32 k = 0; k < len; k++)
            data[k] = (u8)(i * 31u + k);
        echo(1000 + i, len);
    }
    hvg_printf("echo: %u echoes and %u patterned echoes of up to %u bytes, done\n", ECHOES, PATTERNED,
               MAX_DATA);
    hvg_exit(0);
}
