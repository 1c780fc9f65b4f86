/* counter: the memory-writing workload migration and save/restore are checked with, as a
 * kernel: round r (1, 2, ...) stores r, a u64 little-endian, at the start of each of
 * COUNTER_PAGES pages in turn, then waits INTERVAL on a one-shot synthetic timer. The round is
 * read back from the first page, so the count goes on from whatever memory a restore or a
 * migration brought back, and the pages never hold more than two values (the round before and
 * the round being written). `counter_region` and `counter_pages` are symbols a host-side check
 * finds in the ELF. */
#include "hvguest.h"

#ifndef COUNTER_PAGES
#define COUNTER_PAGES 64u
#endif
#define TIMER_SINT 3u
#define TIMER_VECTOR 0x31u
#define INTERVAL 10000u /* 1 ms in 100 ns units */

u8 counter_region[COUNTER_PAGES][HVG_PAGE_SIZE] HVG_PAGE_ALIGNED;
const u32 counter_pages = COUNTER_PAGES;

static void on_timer(u32 vector) { (void)vector; }

void kmain(void)
{
    hvg_console_init();
    hvg_hypercall_init();
    hvg_synic_init();
    hvg_set_handler(TIMER_VECTOR, on_timer);
    hvg_sint_enable(TIMER_SINT, TIMER_VECTOR);
    hvg_printf("counter: %u pages at %p\n", COUNTER_PAGES, (void *)counter_region);
    for (;;) {
        volatile u64 *first = (volatile u64 *)counter_region[0];
        u64 round = *first + 1;
        for (u32 i = 0; i < COUNTER_PAGES; i++)
            *(volatile u64 *)counter_region[i] = round;
        if (round == 1 || round % 1000 == 0)
            hvg_printf("counter: round %lu\n", round);
        hvg_stimer_start(0, TIMER_SINT, INTERVAL, 0);
        for (;;) {
            struct hvg_message m;
            hvg_cli();
            if (hvg_message_take(TIMER_SINT, &m) && m.type == HVG_MESSAGE_TYPE_TIMER_EXPIRED)
                break;
            hvg_sti_hlt();
        }
        hvg_sti();
    }
}
