/* lib.c: the guest SDK's library for kernels: memory functions, the UART console, hypercalls
 * through the hypercall page, SynIC and synthetic-timer set-up, and the IDT and interrupt
 * dispatch that start.S's stubs enter.
 *
 * One VP, identity-mapped: a kernel object's address is its GPA. The hypercall input and output
 * pages are single buffers, so hypercall wrappers must not be called from interrupt handlers.
 */
#include <stdarg.h>

#include "hvguest.h"

/* ---- memory ---------------------------------------------------------------------------------- */
void *memset(void *dst, int c, size_t n)
{
    u8 *d = dst;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    if (d < s)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (; n; n--, x++, y++)
        if (*x != *y)
            return *x < *y ? -1 : 1;
    return 0;
}

/* ---- console: a 16550 UART at 0x3F8 --------------------------------------------------------- */
#define UART_THR 0u
#define UART_IER 1u
#define UART_FCR 2u
#define UART_LCR 3u
#define UART_MCR 4u
#define UART_LSR 5u
#define UART_LSR_THRE 0x20u

void hvg_console_init(void)
{
    /* No baud rate: the divisor latch (DLAB) is left alone, as an emulated UART has no line
     * speed, and a model without DLAB would print the divisor's bytes. Each write is an exit. */
    hvg_outb(HVG_UART_BASE + UART_IER, 0x00);  /* no UART interrupts: the console is polled */
    hvg_outb(HVG_UART_BASE + UART_LCR, 0x03);  /* 8N1 */
    hvg_outb(HVG_UART_BASE + UART_FCR, 0xC7);  /* FIFOs on and cleared */
    hvg_outb(HVG_UART_BASE + UART_MCR, 0x0B);
}

void hvg_putc(char c)
{
    /* Every port access traps to the parent: poll the line status a bounded number of times, so
     * a device model that never reports THRE cannot hang the kernel. */
    for (int i = 0; i < 64 && !(hvg_inb(HVG_UART_BASE + UART_LSR) & UART_LSR_THRE); i++)
        ;
    hvg_outb(HVG_UART_BASE + UART_THR, (u8)c);
}

void hvg_puts(const char *s)
{
    while (*s)
        hvg_putc(*s++);
}

static void put_number(u64 v, unsigned base, int width, char pad, int negative)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    if (negative)
        width--;
    if (negative && pad == '0')
        hvg_putc('-');
    for (; width > n; width--)
        hvg_putc(pad);
    if (negative && pad != '0')
        hvg_putc('-');
    while (n)
        hvg_putc(digits[--n]);
}

void hvg_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            hvg_putc(*fmt);
            continue;
        }
        char pad = ' ';
        int width = 0, longer = 0;
        if (*++fmt == '0')
            pad = '0';
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        while (*fmt == 'l') {
            longer = 1;
            fmt++;
        }
        switch (*fmt) {
        case 'd': {
            int64_t v = longer ? va_arg(ap, int64_t) : va_arg(ap, int);
            put_number(v < 0 ? (u64)-v : (u64)v, 10, width, pad, v < 0);
            break;
        }
        case 'u':
            put_number(longer ? va_arg(ap, u64) : va_arg(ap, unsigned), 10, width, pad, 0);
            break;
        case 'x':
            put_number(longer ? va_arg(ap, u64) : va_arg(ap, unsigned), 16, width, pad, 0);
            break;
        case 'p':
            hvg_puts("0x");
            put_number((u64)(uintptr_t)va_arg(ap, void *), 16, width, pad, 0);
            break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            hvg_puts(s ? s : "(null)");
            break;
        }
        case 'c':
            hvg_putc((char)va_arg(ap, int));
            break;
        case '%':
            hvg_putc('%');
            break;
        default: /* unknown conversion: show it as written */
            hvg_putc('%');
            if (!*fmt)
                goto out;
            hvg_putc(*fmt);
        }
    }
out:
    va_end(ap);
}

void hvg_exit(u8 code)
{
    hvg_outb(HVG_DEBUG_EXIT_PORT, code);
    for (;;) {
        hvg_cli();
        hvg_hlt();
    }
}

/* ---- hypercalls ------------------------------------------------------------------------------ */
u8 hvg_hypercall_page[HVG_PAGE_SIZE] HVG_PAGE_ALIGNED;
static u8 hc_input[HVG_PAGE_SIZE] HVG_PAGE_ALIGNED;   /* input blocks never cross a page */
static u8 hc_output[HVG_PAGE_SIZE] HVG_PAGE_ALIGNED;

void hvg_hypercall_init(void)
{
    hvg_wrmsr(HVG_MSR_GUEST_OS_ID, HVG_GUEST_OS_ID); /* first: the hypercall MSR needs it */
    hvg_wrmsr(HVG_MSR_HYPERCALL, hvg_gpa(hvg_hypercall_page) | 1u);
}

u16 hvg_get_partition_id(u64 *id)
{
    u16 status = (u16)hvg_hypercall(HVG_CALL_GET_PARTITION_ID, 0, hvg_gpa(hc_output));
    if (status == HVG_STATUS_SUCCESS)
        memcpy(id, hc_output, 8);
    return status;
}

u16 hvg_post_message(u32 connection_id, u32 type, const void *payload, u32 size)
{
    struct hvg_post_message *in = (struct hvg_post_message *)hc_input;
    if (size > HVG_MESSAGE_PAYLOAD)
        return HVG_STATUS_INVALID_PARAMETER;
    memset(in, 0, sizeof *in);
    in->connection_id = connection_id;
    in->message_type = type;
    in->payload_size = size;
    memcpy(in->payload, payload, size);
    return (u16)hvg_hypercall(HVG_CALL_POST_MESSAGE, hvg_gpa(in), 0);
}

u16 hvg_signal_event(u32 connection_id, u16 flag)
{
    /* A fast call: the 8-byte input (connection id u32, flag number u16, RsvdZ u16) in RDX. */
    return (u16)hvg_hypercall(HVG_CALL_SIGNAL_EVENT | HVG_CALL_FAST,
                              (u64)connection_id | (u64)flag << 32, 0);
}

/* ---- SynIC and timers ------------------------------------------------------------------------ */
struct hvg_message hvg_sim_page[HVG_SINT_COUNT] HVG_PAGE_ALIGNED;
struct hvg_event_flags hvg_sief_page[HVG_SINT_COUNT] HVG_PAGE_ALIGNED;

void hvg_synic_init(void)
{
    hvg_wrmsr(HVG_MSR_SIMP, hvg_gpa(hvg_sim_page) | 1u);
    hvg_wrmsr(HVG_MSR_SIEFP, hvg_gpa(hvg_sief_page) | 1u);
    hvg_wrmsr(HVG_MSR_SCONTROL, 1u);
}

void hvg_sint_enable(u32 sint, u8 vector)
{
    hvg_wrmsr(HVG_MSR_SINT0 + sint, vector | HVG_SINT_AUTO_EOI);
}

int hvg_message_take(u32 sint, struct hvg_message *out)
{
    struct hvg_message *slot = &hvg_sim_page[sint];
    if (slot->type == HVG_MESSAGE_TYPE_NONE)
        return 0;
    memcpy(out, (const void *)slot, sizeof *out);
    /* Free the slot, then look at MessagePending: the hypervisor delivers the next queued
     * message only on EOM, and sets the flag when there is one. */
    slot->type = HVG_MESSAGE_TYPE_NONE;
    hvg_mb();
    if (((volatile struct hvg_message *)slot)->flags & HVG_MESSAGE_PENDING)
        hvg_wrmsr(HVG_MSR_EOM, 0);
    return 1;
}

int hvg_event_take(u32 sint, u32 flag)
{
    u64 bit = 1ull << (flag % 64u);
    u64 old = __atomic_fetch_and(&hvg_sief_page[sint].bits[flag / 64u], ~bit, __ATOMIC_SEQ_CST);
    return (old & bit) != 0;
}

void hvg_stimer_start(u32 timer, u32 sint, u64 count, int periodic)
{
    u64 config = HVG_STIMER_ENABLE | (u64)sint << HVG_STIMER_SINT_SHIFT;
    if (periodic)
        config |= HVG_STIMER_PERIODIC;
    else
        count += hvg_reference_time(); /* a one-shot timer's count is an absolute time */
    hvg_wrmsr(HVG_MSR_STIMER0_CONFIG + 2u * timer, config);
    hvg_wrmsr(HVG_MSR_STIMER0_COUNT + 2u * timer, count);
}

void hvg_stimer_stop(u32 timer)
{
    hvg_wrmsr(HVG_MSR_STIMER0_CONFIG + 2u * timer, 0);
}

u64 hvg_reference_time(void)
{
    return hvg_rdmsr(HVG_MSR_TIME_REF_COUNT);
}

/* ---- IDT and interrupt dispatch -------------------------------------------------------------- */
struct idt_gate {
    u16 offset_low;
    u16 selector;
    u8 ist;
    u8 type_attr;   /* 0x8E: present, DPL 0, 64-bit interrupt gate */
    u16 offset_mid;
    u32 offset_high;
    u32 reserved;
};
_Static_assert(sizeof(struct idt_gate) == 16, "a long-mode IDT gate is 16 bytes");

static struct idt_gate idt[256] HVG_ALIGNED(16);
static hvg_handler handlers[256];
extern const u64 hvg_isr_table[256]; /* start.S: one entry stub per vector */

void hvg_idt_init(void)
{
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    for (int v = 0; v < 256; v++) {
        u64 a = hvg_isr_table[v];
        idt[v] = (struct idt_gate){(u16)a, cs, 0, 0x8E, (u16)(a >> 16), (u32)(a >> 32), 0};
    }
    struct __attribute__((packed)) {
        u16 limit;
        u64 base;
    } idtr = {sizeof idt - 1, (u64)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

void hvg_set_handler(u8 vector, hvg_handler handler)
{
    handlers[vector] = handler;
}

void hvg_interrupt(u64 vector, u64 error, u64 rip)
{
    hvg_handler h = handlers[vector & 0xFF];
    if (h) {
        h((u32)vector);
        return;
    }
    if (vector < 32) { /* an exception nobody expects: say where, and stop this VP */
        hvg_printf("\nexception %lu error %lx at rip %lx\n", vector, error, rip);
        hvg_exit(0xFF);
    }
    /* A stray external interrupt: ignored (SINTs are AutoEOI, nothing to acknowledge). */
}
