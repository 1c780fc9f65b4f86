/* hosted.c: the platform primitives of hvguest.h for a build on the host (HVG_HOSTED), so that
 * tests load ring.c and vmbus.c into a test process and compare their bytes with vmbus/ring.py
 * and vmbus/protocol.py. Messages the client posts are recorded; the messages it waits for come
 * from a queue the test fills; a wait with the queue empty ends the client call (longjmp) with
 * HOSTED_STARVED instead of halting. Not part of any kernel.
 */
#include <setjmp.h>
#include <string.h>

#include "vmbus.h"

#define HOSTED_STARVED -100
#define MAX_MESSAGES 64

struct hosted_post {
    u32 connection_id, type, size;
    u8 payload[HVG_MESSAGE_PAYLOAD];
};

static struct hosted_post posted[MAX_MESSAGES];
static u32 posted_count;
static struct hvg_message queue[MAX_MESSAGES];
static u32 queue_head, queue_tail;
static u64 signals[MAX_MESSAGES];
static u32 signal_count;
static jmp_buf starved;

void hvg_cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d) { (void)leaf; *a = *b = *c = *d = 0; }
u64 hvg_rdmsr(u32 msr) { (void)msr; return 0; }
void hvg_wrmsr(u32 msr, u64 value) { (void)msr; (void)value; }
void hvg_outb(u16 port, u8 value) { (void)port; (void)value; }
u8 hvg_inb(u16 port) { (void)port; return 0; }
void hvg_cli(void) {}
void hvg_sti(void) {}
void hvg_hlt(void) { longjmp(starved, 1); }
void hvg_sti_hlt(void) { longjmp(starved, 1); }
u64 hvg_hypercall(u64 control, u64 input, u64 output)
{
    (void)control; (void)input; (void)output;
    return HVG_STATUS_INVALID_HYPERCALL_CODE;
}

u16 hvg_post_message(u32 connection_id, u32 type, const void *payload, u32 size)
{
    if (posted_count == MAX_MESSAGES || size > HVG_MESSAGE_PAYLOAD)
        return HVG_STATUS_INSUFFICIENT_BUFFERS;
    struct hosted_post *p = &posted[posted_count++];
    p->connection_id = connection_id;
    p->type = type;
    p->size = size;
    memcpy(p->payload, payload, size);
    return HVG_STATUS_SUCCESS;
}

u16 hvg_signal_event(u32 connection_id, u16 flag)
{
    if (signal_count < MAX_MESSAGES)
        signals[signal_count++] = connection_id | (u64)flag << 32;
    return HVG_STATUS_SUCCESS;
}

int hvg_message_take(u32 sint, struct hvg_message *out)
{
    if (sint != HVG_VMBUS_MSG_SINT || queue_head == queue_tail)
        return 0;
    *out = queue[queue_head++ % MAX_MESSAGES];
    return 1;
}

/* ---- what the test calls ---- */
void hosted_reset(void) { posted_count = queue_head = queue_tail = signal_count = 0; }

int hosted_deliver(u32 type, const u8 *payload, u32 size)
{
    if (queue_tail - queue_head == MAX_MESSAGES || size > HVG_MESSAGE_PAYLOAD)
        return -1;
    struct hvg_message *m = &queue[queue_tail++ % MAX_MESSAGES];
    memset(m, 0, sizeof *m);
    m->type = type;
    m->payload_size = (u8)size;
    memcpy(m->payload, payload, size);
    return 0;
}

u32 hosted_posted(u32 i, u32 *connection_id, u32 *type, u8 *payload)
{
    if (i >= posted_count)
        return 0;
    *connection_id = posted[i].connection_id;
    *type = posted[i].type;
    memcpy(payload, posted[i].payload, posted[i].size);
    return posted[i].size;
}

u32 hosted_posted_count(void) { return posted_count; }
u32 hosted_signal_count(void) { return signal_count; }

int hosted_connect(struct hvg_vmbus *bus)
{
    if (setjmp(starved))
        return HOSTED_STARVED;
    return hvg_vmbus_connect(bus);
}

int hosted_request_offers(struct hvg_vmbus *bus)
{
    if (setjmp(starved))
        return HOSTED_STARVED;
    return hvg_vmbus_request_offers(bus);
}

int hosted_open(struct hvg_vmbus *bus, const struct hvg_offer *offer, struct hvg_channel *ch,
                void *mem, u32 pages, u32 downstream, u32 *status)
{
    if (setjmp(starved))
        return HOSTED_STARVED;
    return hvg_vmbus_open(bus, offer, ch, mem, pages, downstream, status);
}
