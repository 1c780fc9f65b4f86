/* hvguest.h: the freestanding guest SDK for x86-64 kernels that run on hvsim: types, the
 * hypercall codes and statuses hvsim implements, MSR numbers, CPUID leaves, SynIC page layouts,
 * the VMBus client's and ring's interfaces, and the library's functions. No libc is assumed;
 * only the compiler's own freestanding headers (stdint.h, stddef.h).
 *
 * Numbers come from ../../../shared/reference/hyperv-abi.md and agree with native/hv_abi.h (the
 * core's copy); this header does not include that one so that a guest builds on its own.
 *
 * Built two ways: for a guest (the default: the platform primitives below are inline asm), and
 * with HVG_HOSTED for tests on the host, where the primitives are functions a test shim provides
 * (native/guest/hosted.c) and the ring and message code run unchanged.
 */
#ifndef HVGUEST_H
#define HVGUEST_H

#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define HVG_PAGE_SIZE 4096u
#define HVG_PAGE_SHIFT 12u
#define HVG_ALIGNED(n) __attribute__((aligned(n)))
#define HVG_PAGE_ALIGNED HVG_ALIGNED(HVG_PAGE_SIZE)

/* ---- CPUID leaves of the hypervisor range ------------------------------------------------- */
#define HVG_CPUID_VENDOR     0x40000000u /* EAX max leaf, EBX:ECX:EDX vendor id */
#define HVG_CPUID_INTERFACE  0x40000001u /* EAX "Hv#1" */
#define HVG_CPUID_VERSION    0x40000002u
#define HVG_CPUID_FEATURES   0x40000003u /* EAX:EBX the partition's privilege mask */
#define HVG_CPUID_HV_INTERFACE_SIGNATURE 0x31237648u /* "Hv#1" */
#define HVG_CPUID_HYPERVISOR_PRESENT (1u << 31) /* leaf 1 ECX */

/* ---- Synthetic MSRs ------------------------------------------------------------------------ */
#define HVG_MSR_GUEST_OS_ID     0x40000000u
#define HVG_MSR_HYPERCALL       0x40000001u /* bit 0 enable, 63:12 GPFN of the hypercall page */
#define HVG_MSR_VP_INDEX        0x40000002u
#define HVG_MSR_TIME_REF_COUNT  0x40000020u /* partition reference time, 100 ns units */
#define HVG_MSR_SCONTROL        0x40000080u
#define HVG_MSR_SVERSION        0x40000081u
#define HVG_MSR_SIEFP           0x40000082u
#define HVG_MSR_SIMP            0x40000083u
#define HVG_MSR_EOM             0x40000084u
#define HVG_MSR_SINT0           0x40000090u /* SINTn = SINT0 + n */
#define HVG_MSR_STIMER0_CONFIG  0x400000B0u /* STIMERn_CONFIG = + 2n, STIMERn_COUNT = + 2n + 1 */
#define HVG_MSR_STIMER0_COUNT   0x400000B1u

/* An open-source guest's OS id (TLFS): bit 63 set, OS type 62:56 (0x7F: none of the listed
 * ones), then a version; hvsim only requires it non-zero before the hypercall MSR is written. */
#define HVG_GUEST_OS_ID 0xFF00000000010000ull

#define HVG_SINT_MASKED   (1ull << 16)
#define HVG_SINT_AUTO_EOI (1ull << 17)
#define HVG_STIMER_ENABLE    (1ull << 0)
#define HVG_STIMER_PERIODIC  (1ull << 1)
#define HVG_STIMER_AUTO_ENABLE (1ull << 3)
#define HVG_STIMER_SINT_SHIFT 16

/* ---- Hypercalls ---------------------------------------------------------------------------- */
#define HVG_CALL_CREATE_PARTITION 0x0040u
#define HVG_CALL_GET_PARTITION_ID 0x0046u
#define HVG_CALL_POST_MESSAGE     0x005Cu
#define HVG_CALL_SIGNAL_EVENT     0x005Du
#define HVG_CALL_FAST             (1ull << 16)

#define HVG_STATUS_SUCCESS                0x0000u
#define HVG_STATUS_INVALID_HYPERCALL_CODE 0x0002u
#define HVG_STATUS_INVALID_HYPERCALL_INPUT 0x0003u
#define HVG_STATUS_INVALID_ALIGNMENT      0x0004u
#define HVG_STATUS_INVALID_PARAMETER      0x0005u
#define HVG_STATUS_ACCESS_DENIED          0x0006u
#define HVG_STATUS_INVALID_CONNECTION_ID  0x0012u
#define HVG_STATUS_INSUFFICIENT_BUFFERS   0x0013u
#define HVG_STATUS_INVALID_SYNIC_STATE    0x0018u

/* ---- SynIC pages --------------------------------------------------------------------------- */
#define HVG_SINT_COUNT 16u
#define HVG_MESSAGE_SIZE 256u
#define HVG_MESSAGE_PAYLOAD 240u
#define HVG_MESSAGE_PENDING 0x1u
#define HVG_MESSAGE_TYPE_NONE 0u
#define HVG_MESSAGE_TYPE_VMBUS 1u
#define HVG_MESSAGE_TYPE_TIMER_EXPIRED 0x80000010u

struct hvg_message {            /* one 256-byte slot of the message (SIM) page */
    volatile u32 type;          /* 0: the slot is free */
    u8 payload_size;
    u8 flags;                   /* bit 0 MessagePending: write EOM after freeing the slot */
    u16 reserved;
    u64 origin;                 /* sender's partition id or port id; 0 for a timer */
    u8 payload[HVG_MESSAGE_PAYLOAD];
};
_Static_assert(sizeof(struct hvg_message) == HVG_MESSAGE_SIZE, "HV_MESSAGE is 256 bytes");

struct hvg_timer_message {      /* the payload of HvMessageTypeTimerExpired */
    u32 timer_index;
    u32 reserved;
    u64 expiration_time;        /* reference time the timer was due, 100 ns */
    u64 delivery_time;
};

struct hvg_event_flags {        /* one SINT's 256 bytes of the event-flags (SIEF) page */
    volatile u64 bits[32];      /* flag n: bit n % 64 of bits[n / 64] */
};

/* PostMessage input (256 bytes, 8-aligned) and SignalEvent input (a fast call's one word). */
struct hvg_post_message {
    u32 connection_id;
    u32 reserved;
    u32 message_type;
    u32 payload_size;
    u8 payload[HVG_MESSAGE_PAYLOAD];
};
_Static_assert(sizeof(struct hvg_post_message) == 256, "PostMessage input is 256 bytes");

/* ---- Platform primitives ------------------------------------------------------------------- */
#ifndef HVG_HOSTED

static inline void hvg_cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d)
{
    __asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(0));
}

static inline u64 hvg_rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return (u64)hi << 32 | lo;
}

static inline void hvg_wrmsr(u32 msr, u64 value)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)value), "d"((u32)(value >> 32)) : "memory");
}

static inline void hvg_outb(u16 port, u8 value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline u8 hvg_inb(u16 port)
{
    u8 value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void hvg_cli(void) { __asm__ volatile("cli" : : : "memory"); }
static inline void hvg_sti(void) { __asm__ volatile("sti" : : : "memory"); }
static inline void hvg_hlt(void) { __asm__ volatile("hlt" : : : "memory"); }
/* Enable interrupts and halt in one step: sti's one-instruction shadow means an interrupt that
 * became pending while they were off wakes this hlt instead of being taken before it. */
static inline void hvg_sti_hlt(void) { __asm__ volatile("sti; hlt" : : : "memory"); }
static inline void hvg_mb(void) { __asm__ volatile("mfence" : : : "memory"); }

/* The hypercall page: the hypervisor fills it (vmcall; ret) once HVG_MSR_HYPERCALL names it. */
extern u8 hvg_hypercall_page[HVG_PAGE_SIZE];

/* A hypercall through the page: RCX control, RDX input GPA (or first input word when fast),
 * R8 output GPA (or second input word); the result value comes back in RAX. The page's code
 * preserves every other register; r9-r11 are listed as clobbered anyway, as a call would. */
static inline u64 hvg_hypercall(u64 control, u64 input, u64 output)
{
    register u64 r8 __asm__("r8") = output;
    u64 result;
    void *page = hvg_hypercall_page;
    __asm__ volatile("call *%[page]"
                     : "=a"(result), "+c"(control), "+d"(input), "+r"(r8)
                     : [page] "r"(page)
                     : "r9", "r10", "r11", "cc", "memory");
    return result;
}

#else /* HVG_HOSTED: a test shim provides these */

void hvg_cpuid(u32 leaf, u32 *a, u32 *b, u32 *c, u32 *d);
u64 hvg_rdmsr(u32 msr);
void hvg_wrmsr(u32 msr, u64 value);
void hvg_outb(u16 port, u8 value);
u8 hvg_inb(u16 port);
void hvg_cli(void);
void hvg_sti(void);
void hvg_hlt(void);
void hvg_sti_hlt(void);
static inline void hvg_mb(void) { __sync_synchronize(); }
u64 hvg_hypercall(u64 control, u64 input, u64 output);

#endif

/* Guest physical address of a kernel object: the loader maps the kernel identity (GVA == GPA). */
static inline u64 hvg_gpa(const void *p) { return (u64)(uintptr_t)p; }

/* ---- Library (lib.c) ----------------------------------------------------------------------- */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);

void hvg_console_init(void);
void hvg_putc(char c);
void hvg_puts(const char *s);
/* A small printf: %s %c %d %u %x %lx %lu %ld %p and %%, with an optional 0-padded width (%08x). */
void hvg_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Stop the kernel: write `code` to the debug-exit port, then halt with interrupts off for good. */
void hvg_exit(u8 code) __attribute__((noreturn));
#define HVG_UART_BASE 0x3F8u
#define HVG_DEBUG_EXIT_PORT 0xF4u

/* Hypercall set-up and wrappers; each returns the HV status (the result's low 16 bits). */
void hvg_hypercall_init(void);
u16 hvg_get_partition_id(u64 *id);
u16 hvg_post_message(u32 connection_id, u32 type, const void *payload, u32 size);
u16 hvg_signal_event(u32 connection_id, u16 flag);

/* SynIC: enable the message and event-flags pages (this VP's) and unmask a SINT. SINTs are set
 * with AutoEOI, so an interrupt handler never has to EOI the APIC; a message slot still needs
 * hvg_message_done (EOM when the hypervisor has more queued). */
extern struct hvg_message hvg_sim_page[HVG_SINT_COUNT];
extern struct hvg_event_flags hvg_sief_page[HVG_SINT_COUNT];
void hvg_synic_init(void);
void hvg_sint_enable(u32 sint, u8 vector);
/* Copy the message in `sint`'s slot into *out; 0 if the slot is empty. Frees the slot. */
int hvg_message_take(u32 sint, struct hvg_message *out);
/* Test and clear event flag `flag` of `sint`; returns whether it was set. */
int hvg_event_take(u32 sint, u32 flag);

/* Synthetic timer n: fire on `sint` after `count` (100 ns units), periodically if `periodic`. */
void hvg_stimer_start(u32 timer, u32 sint, u64 count, int periodic);
void hvg_stimer_stop(u32 timer);
u64 hvg_reference_time(void);

/* Interrupts: start.S has one stub per vector; they call hvg_interrupt(vector, error, rip),
 * which runs the handler set for the vector (an exception with none prints and stops). */
typedef void (*hvg_handler)(u32 vector);
void hvg_idt_init(void);
void hvg_set_handler(u8 vector, hvg_handler handler);
void hvg_interrupt(u64 vector, u64 error, u64 rip);

/* The kernel's entry: start.S calls it with interrupts off, the stack and IDT set. */
void kmain(void);

#endif /* HVGUEST_H */
