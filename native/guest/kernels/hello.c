/* hello: the smallest kernel that shows the hypercall interface working: it reads the
 * hypervisor's CPUID leaves, enables hypercalls, asks GetPartitionId, tries a call a guest may not
 * make (CreatePartition: ACCESS_DENIED), and takes three interrupts from a periodic synthetic
 * timer, printing each step on the UART console. */
#include "hvguest.h"

#define TIMER_SINT 3u        /* any SINT but 0: a timer on SINT 0 stays disabled */
#define TIMER_VECTOR 0x31u
#define TIMER_PERIOD 10000u  /* 1 ms in 100 ns units */
#define TICKS 3u

static volatile u32 interrupts;
static u8 create_input[HVG_PAGE_SIZE] HVG_PAGE_ALIGNED; /* all zero: a well-formed request */
static u8 create_output[HVG_PAGE_SIZE] HVG_PAGE_ALIGNED;

static void on_timer(u32 vector)
{
    (void)vector;
    interrupts++;
}

void kmain(void)
{
    u32 a, b, c, d;
    char vendor[13];
    u64 id = 0;

    hvg_console_init();
    hvg_cpuid(HVG_CPUID_VENDOR, &a, &b, &c, &d);
    memcpy(vendor, &b, 4);
    memcpy(vendor + 4, &c, 4);
    memcpy(vendor + 8, &d, 4);
    vendor[12] = 0;
    hvg_printf("hello: hypervisor \"%s\", leaves to %x\n", vendor, a);
    hvg_cpuid(HVG_CPUID_FEATURES, &a, &b, &c, &d);
    hvg_printf("hello: privileges %08x%08x\n", b, a);

    hvg_hypercall_init();
    u16 status = hvg_get_partition_id(&id);
    hvg_printf("hello: GetPartitionId status %u partition %lu\n", status, id);
    status = (u16)hvg_hypercall(HVG_CALL_CREATE_PARTITION, hvg_gpa(create_input), hvg_gpa(create_output));
    hvg_printf("hello: CreatePartition status %u\n", status);

    hvg_synic_init();
    hvg_set_handler(TIMER_VECTOR, on_timer);
    hvg_sint_enable(TIMER_SINT, TIMER_VECTOR);
    hvg_stimer_start(0, TIMER_SINT, TIMER_PERIOD, 1);
    for (u32 ticks = 0; ticks < TICKS;) {
        struct hvg_message m;
        hvg_cli();
        if (!hvg_message_take(TIMER_SINT, &m)) {
            hvg_sti_hlt();
            continue;
        }
        hvg_sti();
        if (m.type == HVG_MESSAGE_TYPE_TIMER_EXPIRED) {
            struct hvg_timer_message t;
            memcpy(&t, m.payload, sizeof t);
            hvg_printf("hello: tick %u timer %u due %lu\n", ++ticks, t.timer_index, t.expiration_time);
        }
    }
    hvg_stimer_stop(0);
    hvg_printf("hello: %u timer interrupts, done\n", interrupts);
    hvg_exit(0);
}
