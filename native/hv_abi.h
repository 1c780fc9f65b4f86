/* hv_abi.h: the hypervisor's public ABI as the TLFS lays it out: call codes, status codes with
 * their messages (one table, used by C and Python), privilege bits, register names, message
 * types and the input/output layouts of the hypercalls hvsim implements. No logic lives here.
 *
 * Source of every number: ../shared/reference/hyperv-abi.md (TLFS, Linux hvgdk_mini.h,
 * OpenVMM hvdef). Byte order is little-endian throughout.
 */
#ifndef HV_ABI_H
#define HV_ABI_H

#include <stddef.h>
#include <stdint.h>

#define HV_PAGE_SIZE  4096u
#define HV_PAGE_SHIFT 12u

/* ---- Hypercall input value (control word), TLFS "Hypercall Inputs" ----------------------- */
#define HV_CTL_CALL_CODE_MASK  0x000000000000FFFFull /* 15:0  */
#define HV_CTL_FAST            0x0000000000010000ull /* 16    */
#define HV_CTL_VARHEAD_SHIFT   17                    /* 26:17 in QWORDs */
#define HV_CTL_VARHEAD_MASK    0x0000000007FE0000ull
#define HV_CTL_RSVD0_MASK      0x0000000078000000ull /* 30:27 RsvdZ */
#define HV_CTL_NESTED          0x0000000080000000ull /* 31 is-nested: never set by a guest here */
#define HV_CTL_REP_COUNT_SHIFT 32                    /* 43:32 */
#define HV_CTL_REP_COUNT_MASK  0x00000FFF00000000ull
#define HV_CTL_RSVD1_MASK      0x0000F00000000000ull /* 47:44 RsvdZ */
#define HV_CTL_REP_START_SHIFT 48                    /* 59:48 */
#define HV_CTL_REP_START_MASK  0x0FFF000000000000ull
#define HV_CTL_RSVD2_MASK      0xF000000000000000ull /* 63:60 RsvdZ */

/* Result value: status 15:0, reps completed 43:32. */
#define HV_RESULT_REPS_SHIFT 32
#define HV_MAX_REP_COUNT     4095u

/* ---- HV_STATUS: one table, name + message; Python reads it through hv_status_name/message -- */
#define HV_STATUS_TABLE(X)                                                                       \
    X(0x0000, SUCCESS, "The operation succeeded")                                               \
    X(0x0002, INVALID_HYPERCALL_CODE, "The hypercall code is not supported")                    \
    X(0x0003, INVALID_HYPERCALL_INPUT, "The encoding of the hypercall input value is not supported") \
    X(0x0004, INVALID_ALIGNMENT, "A parameter has an invalid alignment or lies outside the caller's memory") \
    X(0x0005, INVALID_PARAMETER, "An invalid parameter was specified")                         \
    X(0x0006, ACCESS_DENIED, "The caller lacks the privilege the operation requires")           \
    X(0x0007, INVALID_PARTITION_STATE, "The partition is not in a state that allows the operation") \
    X(0x0008, OPERATION_DENIED, "The operation is not allowed in the current state")            \
    X(0x0009, UNKNOWN_PROPERTY, "The partition property is not recognized")                     \
    X(0x000A, PROPERTY_VALUE_OUT_OF_RANGE, "The property value is out of range")                \
    X(0x000B, INSUFFICIENT_MEMORY, "The partition's memory pool holds too few pages")           \
    X(0x000C, PARTITION_TOO_DEEP, "The partition hierarchy would be too deep")                  \
    X(0x000D, INVALID_PARTITION_ID, "The partition id is not valid")                            \
    X(0x000E, INVALID_VP_INDEX, "The virtual processor index is not valid")                     \
    X(0x0010, NOT_FOUND, "The requested item was not found")                                    \
    X(0x0011, INVALID_PORT_ID, "The port id is not valid")                                      \
    X(0x0012, INVALID_CONNECTION_ID, "The connection id is not valid")                          \
    X(0x0013, INSUFFICIENT_BUFFERS, "The port's message buffers are all in use")                \
    X(0x0014, NOT_ACKNOWLEDGED, "The interrupt was not acknowledged")                           \
    X(0x0015, INVALID_VP_STATE, "The virtual processor is not in a state that allows the operation") \
    X(0x0016, ACKNOWLEDGED, "The interrupt was already acknowledged")                           \
    X(0x0017, INVALID_SAVE_RESTORE_STATE, "The save/restore state is not valid")                \
    X(0x0018, INVALID_SYNIC_STATE, "The synthetic interrupt controller is not in a state that allows the operation") \
    X(0x0019, OBJECT_IN_USE, "The object is in use")                                            \
    X(0x001A, INVALID_PROXIMITY_DOMAIN_INFO, "The proximity domain information is not valid")   \
    X(0x001B, NO_DATA, "There is no data")                                                      \
    X(0x001C, INACTIVE, "The object is inactive")                                               \
    X(0x001D, NO_RESOURCES, "There are not enough resources")                                   \
    X(0x001E, FEATURE_UNAVAILABLE, "The feature is unavailable")                                \
    X(0x001F, PARTIAL_PACKET, "Only part of the packet was transferred")                        \
    X(0x0020, PROCESSOR_FEATURE_NOT_SUPPORTED, "A processor feature is not supported")          \
    X(0x0030, PROCESSOR_CACHE_LINE_FLUSH_SIZE_INCOMPATIBLE, "The processor cache line flush size is incompatible") \
    X(0x0033, INSUFFICIENT_BUFFER, "The output buffer is too small")                            \
    X(0x0037, INCOMPATIBLE_PROCESSOR, "The processor is incompatible")                          \
    X(0x0038, INSUFFICIENT_DEVICE_DOMAINS, "There are not enough device domains")               \
    X(0x003C, CPUID_FEATURE_VALIDATION_ERROR, "CPUID feature validation failed")                \
    X(0x003D, CPUID_XSAVE_FEATURE_VALIDATION_ERROR, "CPUID XSAVE feature validation failed")    \
    X(0x003E, PROCESSOR_STARTUP_TIMEOUT, "The processor did not start in time")                 \
    X(0x003F, SMX_ENABLED, "SMX is enabled")                                                    \
    X(0x0041, INVALID_LP_INDEX, "The logical processor index is not valid")                     \
    X(0x0050, INVALID_REGISTER_VALUE, "The register value is not valid")                        \
    X(0x0051, INVALID_VTL_STATE, "The VTL state is not valid")                                  \
    X(0x0055, NX_NOT_DETECTED, "NX is not detected")                                            \
    X(0x0057, INVALID_DEVICE_ID, "The device id is not valid")                                  \
    X(0x0058, INVALID_DEVICE_STATE, "The device state is not valid")                            \
    X(0x0059, PENDING_PAGE_REQUESTS, "Page requests are pending")                               \
    X(0x0060, PAGE_REQUEST_INVALID, "The page request is not valid")                            \
    X(0x0065, KEY_ALREADY_EXISTS, "The key already exists")                                     \
    X(0x0066, DEVICE_ALREADY_IN_DOMAIN, "The device is already in a domain")                    \
    X(0x006F, INVALID_CPU_GROUP_ID, "The CPU group id is not valid")                            \
    X(0x0070, INVALID_CPU_GROUP_STATE, "The CPU group state is not valid")                      \
    X(0x0071, OPERATION_FAILED, "The operation failed")                                         \
    X(0x0072, NOT_ALLOWED_WITH_NESTED_VIRT_ACTIVE, "Not allowed while nested virtualization is active") \
    X(0x0073, INSUFFICIENT_ROOT_MEMORY, "The root partition has too little memory")             \
    X(0x0074, EVENT_BUFFER_ALREADY_FREED, "The event buffer was already freed")                 \
    X(0x0078, TIME_OUT, "The operation timed out")                                              \
    X(0x0079, CALL_PENDING, "The call is pending")                                              \
    X(0x0086, VTL_ALREADY_ENABLED, "The VTL is already enabled")                                \
    X(0x0087, UNKNOWN_REGISTER_NAME, "The register name is not recognized")

enum hv_status {
#define HV_STATUS_ENUM(code, name, msg) HV_STATUS_##name = code,
    HV_STATUS_TABLE(HV_STATUS_ENUM)
#undef HV_STATUS_ENUM
};

/* ---- Call codes (those hvsim implements) ------------------------------------------------ */
#define HVCALL_CREATE_PARTITION        0x0040
#define HVCALL_INITIALIZE_PARTITION    0x0041
#define HVCALL_FINALIZE_PARTITION      0x0042
#define HVCALL_DELETE_PARTITION        0x0043
#define HVCALL_GET_PARTITION_PROPERTY  0x0044
#define HVCALL_SET_PARTITION_PROPERTY  0x0045
#define HVCALL_GET_PARTITION_ID        0x0046
#define HVCALL_GET_NEXT_CHILD_PARTITION 0x0047
#define HVCALL_DEPOSIT_MEMORY          0x0048
#define HVCALL_WITHDRAW_MEMORY         0x0049
#define HVCALL_GET_MEMORY_BALANCE      0x004A
#define HVCALL_MAP_GPA_PAGES           0x004B
#define HVCALL_UNMAP_GPA_PAGES         0x004C
#define HVCALL_CREATE_VP               0x004E
#define HVCALL_DELETE_VP               0x004F
#define HVCALL_GET_VP_REGISTERS        0x0050
#define HVCALL_SET_VP_REGISTERS        0x0051
#define HVCALL_DELETE_PORT             0x0058
#define HVCALL_DISCONNECT_PORT         0x005B
#define HVCALL_POST_MESSAGE            0x005C
#define HVCALL_SIGNAL_EVENT            0x005D
#define HVCALL_CREATE_PORT             0x0095
#define HVCALL_CONNECT_PORT            0x0096
#define HVCALL_GET_GPA_PAGES_ACCESS_STATES 0x00C9 /* rep: a child's dirty log, 1 state byte per page */
#define HVCALL_MODIFY_SPARSE_GPA_PAGE_HOST_VISIBILITY 0x00DB

/* ---- HV_PARTITION_PRIVILEGE_MASK bit numbers ------------------------------------------- */
#define HV_PRIV_ACCESS_VP_RUNTIME_REG        0
#define HV_PRIV_ACCESS_PARTITION_REF_COUNTER 1
#define HV_PRIV_ACCESS_SYNIC_REGS            2
#define HV_PRIV_ACCESS_SYNTHETIC_TIMER_REGS  3
#define HV_PRIV_ACCESS_INTR_CTRL_REGS        4
#define HV_PRIV_ACCESS_HYPERCALL_MSRS        5
#define HV_PRIV_ACCESS_VP_INDEX              6
#define HV_PRIV_ACCESS_RESET_REG             7
#define HV_PRIV_ACCESS_STATS_REG             8
#define HV_PRIV_ACCESS_PARTITION_REF_TSC     9
#define HV_PRIV_ACCESS_GUEST_IDLE_REG        10
#define HV_PRIV_ACCESS_FREQUENCY_REGS        11
#define HV_PRIV_CREATE_PARTITIONS            32
#define HV_PRIV_ACCESS_PARTITION_ID          33
#define HV_PRIV_ACCESS_MEMORY_POOL           34
#define HV_PRIV_POST_MESSAGES                36
#define HV_PRIV_SIGNAL_EVENTS                37
#define HV_PRIV_CREATE_PORT                  38
#define HV_PRIV_CONNECT_PORT                 39
#define HV_PRIV_ACCESS_STATS                 40
#define HV_PRIV_DEBUGGING                    43
#define HV_PRIV_CPU_MANAGEMENT               44
#define HV_PRIV_ACCESS_VSM                   48
#define HV_PRIV_ACCESS_VP_REGISTERS          49
#define HV_PRIV_START_VIRTUAL_PROCESSOR      53
#define HV_PRIV(bit) (1ull << (bit))

/* The privileges every guest partition gets (the enlightenments a Hyper-V child sees). */
#define HV_PRIV_GUEST_DEFAULT                                                                   \
    (HV_PRIV(HV_PRIV_ACCESS_VP_RUNTIME_REG) | HV_PRIV(HV_PRIV_ACCESS_PARTITION_REF_COUNTER) |   \
     HV_PRIV(HV_PRIV_ACCESS_SYNIC_REGS) | HV_PRIV(HV_PRIV_ACCESS_SYNTHETIC_TIMER_REGS) |        \
     HV_PRIV(HV_PRIV_ACCESS_INTR_CTRL_REGS) | HV_PRIV(HV_PRIV_ACCESS_HYPERCALL_MSRS) |          \
     HV_PRIV(HV_PRIV_ACCESS_VP_INDEX) | HV_PRIV(HV_PRIV_ACCESS_PARTITION_REF_TSC) |             \
     HV_PRIV(HV_PRIV_ACCESS_PARTITION_ID) | HV_PRIV(HV_PRIV_POST_MESSAGES) |                    \
     HV_PRIV(HV_PRIV_SIGNAL_EVENTS))
/* Privileges only the root may hold: a child never gets these (hvsim refuses to grant them). */
#define HV_PRIV_ROOT_ONLY (HV_PRIV(HV_PRIV_CREATE_PARTITIONS) | HV_PRIV(HV_PRIV_ACCESS_MEMORY_POOL))
/* The root partition's privileges at boot. */
#define HV_PRIV_ROOT                                                                            \
    (HV_PRIV_GUEST_DEFAULT | HV_PRIV_ROOT_ONLY | HV_PRIV(HV_PRIV_CREATE_PORT) |                 \
     HV_PRIV(HV_PRIV_CONNECT_PORT) | HV_PRIV(HV_PRIV_ACCESS_STATS) |                             \
     HV_PRIV(HV_PRIV_CPU_MANAGEMENT) | HV_PRIV(HV_PRIV_ACCESS_VP_REGISTERS) |                    \
     HV_PRIV(HV_PRIV_START_VIRTUAL_PROCESSOR))

/* ---- Partition ids and properties -------------------------------------------------------- */
#define HV_PARTITION_ID_INVALID 0ull
#define HV_PARTITION_ID_SELF    0xFFFFFFFFFFFFFFFFull
#define HV_VP_INDEX_SELF        0xFFFFFFFEu

/* The documented property subset (HV_PARTITION_PROPERTY_CODE). */
#define HV_PARTITION_PROPERTY_PRIVILEGE_FLAGS 0x00010000u /* set before InitializePartition */
#define HV_PARTITION_PROPERTY_SUSPEND     0x00020000u /* 1: VPs do not run (new children start so) */
#define HV_PARTITION_PROPERTY_CPU_RESERVE     0x00020001u /* % of one LP per VP, 0..100      */
#define HV_PARTITION_PROPERTY_CPU_CAP         0x00020002u /* limit, % of one LP, 1..100      */
#define HV_PARTITION_PROPERTY_CPU_WEIGHT      0x00020003u /* relative weight 1..10000        */
/* HV_PARTITION_PAGE_ACCESS_TRACKING_CONFIG: bit 0 Enabled, bits 2:1 Granularity (0 = 4 KiB, the
 * only one hvsim has), the rest reserved: the child's dirty log is on while Enabled (dirty.c). */
#define HV_PARTITION_PROPERTY_GPA_PAGE_ACCESS_TRACKING 0x00050005u
#define HV_PAGE_ACCESS_TRACKING_ENABLED 0x1ull

/* GetGpaPagesAccessStates flags (HV_GPA_PAGE_ACCESS_STATE_FLAGS) and its output byte per page
 * (HV_GPA_PAGE_ACCESS_STATE: bit 0 accessed, bit 1 dirty). hvsim keeps no accessed state. */
#define HV_GPA_ACCESS_CLEAR_ACCESSED 0x1ull
#define HV_GPA_ACCESS_SET_ACCESSED   0x2ull
#define HV_GPA_ACCESS_CLEAR_DIRTY    0x4ull
#define HV_GPA_ACCESS_SET_DIRTY      0x8ull
#define HV_GPA_ACCESS_STATE_DIRTY    0x2u

/* GPA map flags (HV_MAP_GPA_*). */
#define HV_MAP_GPA_READABLE   0x1u
#define HV_MAP_GPA_WRITABLE   0x2u
#define HV_MAP_GPA_EXECUTABLE 0x4u   /* hvsim keeps one "execute" right (kernel and user alike) */
#define HV_MAP_GPA_VALID_MASK 0x7u

/* Host visibility of a page (ModifySparseGpaPageHostVisibility, low 2 bits of its input's
 * host_visibility; 2 is invalid, bits 31:2 reserved): what the parent may do with it. */
#define HV_HOST_VISIBILITY_NONE       0u
#define HV_HOST_VISIBILITY_READ_ONLY  1u
#define HV_HOST_VISIBILITY_READ_WRITE 3u
#define HV_HOST_VISIBILITY_MASK       3u

/* ---- Register names (HV_REGISTER_NAME), the subset hvsim implements ------------------------- */
#define HV_X64_REGISTER_RAX     0x00020000u /* ..R15 = 0x0002000F, in the x64 encoding order */
#define HV_X64_REGISTER_R15     0x0002000Fu
#define HV_X64_REGISTER_RIP     0x00020010u
#define HV_X64_REGISTER_RFLAGS  0x00020011u
#define HV_X64_REGISTER_CR0     0x00040000u
#define HV_X64_REGISTER_CR3     0x00040002u
#define HV_X64_REGISTER_CR4     0x00040003u
#define HV_REGISTER_VP_RUNTIME  0x00090000u /* read-only: ns of run time / 100 */
#define HV_REGISTER_HYPERCALL   0x00090001u /* HV_X64_MSR_HYPERCALL (0x40000001), partition-wide */
#define HV_REGISTER_GUEST_OS_ID 0x00090002u
#define HV_REGISTER_VP_INDEX    0x00090003u /* read-only */
#define HV_REGISTER_TIME_REF_COUNT 0x00090004u /* read-only: partition reference time, 100 ns */
#define HV_REGISTER_SINT0       0x000A0000u /* ..SINT15 = 0x000A000F */
#define HV_REGISTER_SINT15      0x000A000Fu
#define HV_REGISTER_SCONTROL    0x000A0010u
#define HV_REGISTER_SVERSION    0x000A0011u
#define HV_REGISTER_SIEFP       0x000A0012u
#define HV_REGISTER_SIMP        0x000A0013u
#define HV_REGISTER_EOM         0x000A0014u
#define HV_REGISTER_STIMER0_CONFIG 0x000B0000u /* STIMERn_CONFIG = base + 2n, COUNT = +1 */
#define HV_REGISTER_STIMER3_COUNT  0x000B0007u

/* ---- Input/output layouts ------------------------------------------------------------------ */
struct hv_in_create_partition {   /* 0x0040, 56 bytes */
    uint64_t flags;
    uint64_t proximity_domain_info;
    uint32_t compatibility_version;
    uint32_t padding;
    uint8_t disabled_processor_features[16];
    uint64_t disabled_xsave;
    uint64_t rsvdz;
};
struct hv_in_partition_id {       /* Initialize, Finalize, Delete */
    uint64_t partition_id;
};
struct hv_in_get_partition_property { /* 0x0044 */
    uint64_t partition_id;
    uint32_t property_code;
    uint32_t padding;
};
struct hv_in_set_partition_property { /* 0x0045 */
    uint64_t partition_id;
    uint32_t property_code;
    uint32_t padding;
    uint64_t property_value;
};
struct hv_in_get_next_child_partition { /* 0x0047 */
    uint64_t parent_id;
    uint64_t previous_child_id;
};
struct hv_in_deposit_memory {     /* 0x0048 header; reps: u64 GPA page numbers */
    uint64_t partition_id;
};
struct hv_in_withdraw_memory {    /* 0x0049 header; output reps: u64 GPA page numbers */
    uint64_t partition_id;
    uint64_t proximity_domain_info;
};
struct hv_in_get_memory_balance { /* 0x004A */
    uint64_t partition_id;
    uint64_t proximity_domain_info;
};
struct hv_out_get_memory_balance {
    uint64_t pages_available;
    uint64_t pages_in_use;
};
struct hv_in_map_gpa_pages {      /* 0x004B header; reps: u64 source GPA page numbers */
    uint64_t target_partition_id;
    uint64_t target_gpa_base;     /* a page number */
    uint32_t map_flags;
    uint32_t padding;
};
struct hv_in_unmap_gpa_pages {    /* 0x004C header; rep count = page count, no elements */
    uint64_t target_partition_id;
    uint64_t target_gpa_base;
    uint32_t unmap_flags;
    uint32_t padding;
};
struct hv_in_modify_host_visibility { /* 0x00DB header; reps: u64 GPA page numbers of the caller */
    uint64_t partition_id;        /* HV_PARTITION_ID_SELF or the caller's own id */
    uint32_t host_visibility;     /* HV_HOST_VISIBILITY_*; bits 31:2 reserved, zero */
    uint32_t reserved;            /* zero */
};
struct hv_in_create_vp {          /* 0x004E */
    uint64_t partition_id;
    uint32_t vp_index;
    uint32_t padding;
    uint64_t proximity_domain_info;
    uint64_t flags;
};
struct hv_in_delete_vp {          /* 0x004F */
    uint64_t partition_id;
    uint32_t vp_index;
    uint32_t padding;
};
struct hv_in_vp_registers {       /* 0x0050/0x0051 header */
    uint64_t partition_id;
    uint32_t vp_index;
    uint8_t input_vtl;
    uint8_t padding[3];
};
struct hv_register_assoc {        /* SetVpRegisters rep element, 32 bytes */
    uint32_t name;
    uint32_t reserved1;
    uint64_t reserved2;
    uint64_t value_low;
    uint64_t value_high;
};

struct hv_in_get_gpa_pages_access_states { /* 0x00C9 header; rep count = pages */
    uint64_t partition_id;
    uint64_t flags;               /* HV_GPA_ACCESS_* */
    uint64_t gpa_page_number;     /* the first page; rep i is page gpa_page_number + i */
};
_Static_assert(sizeof(struct hv_in_get_gpa_pages_access_states) == 24, "GetGpaPagesAccessStates header is 24 bytes");
_Static_assert(sizeof(struct hv_in_create_partition) == 56, "CreatePartition input is 56 bytes");
_Static_assert(sizeof(struct hv_in_get_partition_property) == 16, "layout");
_Static_assert(sizeof(struct hv_in_set_partition_property) == 24, "layout");
_Static_assert(sizeof(struct hv_in_get_next_child_partition) == 16, "layout");
_Static_assert(sizeof(struct hv_in_withdraw_memory) == 16, "layout");
_Static_assert(sizeof(struct hv_out_get_memory_balance) == 16, "layout");
_Static_assert(sizeof(struct hv_in_map_gpa_pages) == 24, "layout");
_Static_assert(sizeof(struct hv_in_unmap_gpa_pages) == 24, "layout");
_Static_assert(sizeof(struct hv_in_create_vp) == 32, "layout");
_Static_assert(sizeof(struct hv_in_modify_host_visibility) == 16, "ModifySparseGpaPageHostVisibility header is 16 bytes");
_Static_assert(sizeof(struct hv_in_delete_vp) == 16, "layout");
_Static_assert(sizeof(struct hv_in_vp_registers) == 16, "layout");
_Static_assert(sizeof(struct hv_register_assoc) == 32, "HV_REGISTER_ASSOC is 32 bytes");

/* ==== SynIC, ports and timers (synic.c, port.c) ============================================== */
/* TLFS inter-partition communication; ../shared/reference/hyperv-abi.md §1.4 and §2. */
#define HV_SYNIC_SINT_COUNT      16u
#define HV_SYNIC_STIMER_COUNT    4u
#define HV_SYNIC_VERSION         1u          /* what SVERSION reads */
#define HV_SYNIC_MIN_VECTOR      16u         /* an unmasked SINT needs a vector 16..255 */

/* SINTn: 7:0 vector, 15:8 RsvdP, 16 masked, 17 AutoEOI, 18 polling, 63:19 RsvdP. Bits 19
 * (as_intercept) and 20 (proxy) are Linux/nested extensions hvsim does not implement. */
#define HV_SINT_VECTOR_MASK      0xFFull
#define HV_SINT_MASKED           (1ull << 16)
#define HV_SINT_AUTO_EOI         (1ull << 17)
#define HV_SINT_POLLING          (1ull << 18)
#define HV_SINT_VALID_MASK       (HV_SINT_VECTOR_MASK | HV_SINT_MASKED | HV_SINT_AUTO_EOI | HV_SINT_POLLING)
#define HV_SINT_RESET            HV_SINT_MASKED
/* SCONTROL: bit 0 enable. SIMP / SIEFP: bit 0 enable, 11:1 RsvdP, 63:12 GPFN. */
#define HV_SCONTROL_ENABLE       0x1ull
#define HV_SYNIC_PAGE_ENABLE     0x1ull
#define HV_SYNIC_PAGE_RSVD_MASK  0xFFEull
#define HV_SYNIC_PAGE_GPFN_SHIFT 12
/* HV_X64_MSR_HYPERCALL: bit 0 enable, bit 1 locked, 11:2 RsvdP, 63:12 GPFN of the hypercall page. */
#define HV_HYPERCALL_MSR_ENABLE  0x1ull
#define HV_HYPERCALL_MSR_LOCKED  0x2ull
#define HV_HYPERCALL_MSR_RSVD_MASK 0xFFCull

/* Synthetic timers: STIMERn_CONFIG = HV_REGISTER_STIMER0_CONFIG + 2n, STIMERn_COUNT = +2n+1. */
#define HV_REGISTER_STIMER0_COUNT 0x000B0001u
#define HV_STIMER_ENABLE         (1ull << 0)
#define HV_STIMER_PERIODIC       (1ull << 1)
#define HV_STIMER_LAZY           (1ull << 2)
#define HV_STIMER_AUTO_ENABLE    (1ull << 3)
#define HV_STIMER_APIC_VECTOR_SHIFT 4        /* 11:4, direct mode only */
#define HV_STIMER_APIC_VECTOR_MASK  0xFF0ull
#define HV_STIMER_DIRECT_MODE    (1ull << 12)
#define HV_STIMER_SINTX_SHIFT    16          /* 19:16 */
#define HV_STIMER_SINTX_MASK     0xF0000ull
#define HV_STIMER_CONFIG_VALID_MASK 0xF1FFFull /* 12:0 and 19:16; the rest is reserved */

/* The message page (SIM page): 16 slots of HV_MESSAGE, slot n for SINTn. */
#define HV_MESSAGE_SIZE          256u
#define HV_MESSAGE_PAYLOAD_MAX   240u
#define HV_MESSAGE_FLAG_PENDING  0x1u        /* MessageFlags bit 0: MessagePending */
#define HV_MESSAGE_TYPE_HYPERVISOR_MASK 0x80000000u /* guests may not send these types */

/* HV_MESSAGE_TYPE (TLFS hv_message_type.md). VMBus channel messages use type 1. */
#define HV_MESSAGE_TYPE_NONE                        0x00000000u
#define HV_MESSAGE_TYPE_VMBUS                       0x00000001u
#define HV_MESSAGE_TYPE_UNMAPPED_GPA                0x80000000u
#define HV_MESSAGE_TYPE_GPA_INTERCEPT               0x80000001u
#define HV_MESSAGE_TYPE_UNACCEPTED_GPA              0x80000003u
#define HV_MESSAGE_TYPE_GPA_ATTRIBUTE_INTERCEPT     0x80000004u
#define HV_MESSAGE_TYPE_TIMER_EXPIRED               0x80000010u
#define HV_MESSAGE_TYPE_INVALID_VP_REGISTER_VALUE   0x80000020u
#define HV_MESSAGE_TYPE_UNRECOVERABLE_EXCEPTION     0x80000021u
#define HV_MESSAGE_TYPE_UNSUPPORTED_FEATURE         0x80000022u
#define HV_MESSAGE_TYPE_OPAQUE_INTERCEPT            0x8000003Fu
#define HV_MESSAGE_TYPE_EVENT_LOG_BUFFER_COMPLETE   0x80000040u
#define HV_MESSAGE_TYPE_HYPERCALL_INTERCEPT         0x80000050u
#define HV_MESSAGE_TYPE_SYNIC_EVENT_INTERCEPT       0x80000060u
#define HV_MESSAGE_TYPE_SYNIC_SINT_INTERCEPT        0x80000061u
#define HV_MESSAGE_TYPE_SYNIC_SINT_DELIVERABLE      0x80000062u
#define HV_MESSAGE_TYPE_ASYNC_CALL_COMPLETION       0x80000070u
#define HV_MESSAGE_TYPE_INSUFFICIENT_MEMORY         0x80000071u
#define HV_MESSAGE_TYPE_SCHEDULER_VP_SIGNAL_BITSET  0x80000100u
#define HV_MESSAGE_TYPE_SCHEDULER_VP_SIGNAL_PAIR    0x80000101u
#define HV_MESSAGE_TYPE_X64_IO_PORT_INTERCEPT       0x80010000u
#define HV_MESSAGE_TYPE_MSR_INTERCEPT               0x80010001u
#define HV_MESSAGE_TYPE_X64_CPUID_INTERCEPT         0x80010002u
#define HV_MESSAGE_TYPE_EXCEPTION_INTERCEPT         0x80010003u
#define HV_MESSAGE_TYPE_X64_APIC_EOI                0x80010004u
#define HV_MESSAGE_TYPE_REGISTER_INTERCEPT          0x80010006u
#define HV_MESSAGE_TYPE_X64_HALT                    0x80010007u
#define HV_MESSAGE_TYPE_X64_INTERRUPTION_DELIVERABLE 0x80010008u
#define HV_MESSAGE_TYPE_X64_SIPI_INTERCEPT          0x80010009u

/* The event-flags page (SIEF page): 16 areas of 256 bytes, 2048 flags per SINT. */
#define HV_EVENT_FLAGS_BYTES     256u
#define HV_EVENT_FLAGS_COUNT     2048u

/* Ports and connections. HV_PORT_ID / HV_CONNECTION_ID: 23:0 id, 31:24 reserved-zero. */
#define HV_PORT_TYPE_MESSAGE     1u
#define HV_PORT_TYPE_EVENT       2u
#define HV_PORT_TYPE_MONITOR     3u
#define HV_PORT_ID_MASK          0x00FFFFFFu
#define HV_PORT_MESSAGE_BUFFERS  16u         /* per port, from the port owner's pool */

struct hv_message_header {       /* HV_MESSAGE_HEADER, 16 bytes */
    uint32_t message_type;
    uint8_t payload_size;
    uint8_t message_flags;        /* HV_MESSAGE_FLAG_* */
    uint16_t reserved;
    uint64_t origination_id;      /* sender's port id for PostMessage, 0 for timers */
};
struct hv_message {              /* HV_MESSAGE: one SIM slot, 256 bytes */
    struct hv_message_header header;
    uint8_t payload[HV_MESSAGE_PAYLOAD_MAX];
};
struct hv_timer_message_payload { /* TimerExpired payload, 24 bytes; times in 100 ns */
    uint32_t timer_index;
    uint32_t reserved;
    uint64_t expiration_time;
    uint64_t delivery_time;
};
/* HV_PORT_INFO, 24 bytes. The TLFS union is flattened: message and event ports share the
 * target fields; a message port's base_flag_number..rsvdz is its RsvdZ u64. (A monitor port's
 * MonitorAddress would overlay target_sint/target_vp; hvsim does not implement monitor ports.) */
struct hv_port_info {
    uint32_t port_type;
    uint32_t reserved;
    uint32_t target_sint;
    uint32_t target_vp;
    uint16_t base_flag_number;    /* event ports */
    uint16_t flag_count;          /* event ports */
    uint32_t rsvdz;
};
struct hv_connection_info {      /* HV_CONNECTION_INFO as ConnectPort takes it, 32 bytes */
    uint32_t port_type;
    uint32_t reserved;
    uint64_t monitor_address;     /* monitor connections only: RsvdZ otherwise */
    uint64_t rsvdz[2];
};
struct hv_in_create_port {       /* 0x0095, 56 bytes */
    uint64_t port_partition;
    uint32_t port_id;
    uint8_t port_vtl;
    uint8_t min_connection_vtl;
    uint16_t rsvdz;
    uint64_t connection_partition;
    struct hv_port_info port_info;
    uint64_t proximity_domain_info;
};
struct hv_in_connect_port {      /* 0x0096, 72 bytes */
    uint64_t connection_partition;
    uint32_t connection_id;
    uint8_t connection_vtl;
    uint8_t rsvdz[3];
    uint64_t port_partition;
    uint32_t port_id;
    uint32_t rsvdz2;
    struct hv_connection_info connection_info;
    uint64_t proximity_domain_info;
};
struct hv_in_delete_port {       /* 0x0058, 16 bytes (12 used) */
    uint64_t port_partition;
    uint32_t port_id;
    uint32_t padding;
};
struct hv_in_disconnect_port {   /* 0x005B, 16 bytes (12 used) */
    uint64_t connection_partition;
    uint32_t connection_id;
    uint32_t padding;
};
struct hv_in_post_message {      /* 0x005C, 256 bytes */
    uint32_t connection_id;
    uint32_t rsvdz;
    uint32_t message_type;
    uint32_t payload_size;
    uint8_t payload[HV_MESSAGE_PAYLOAD_MAX];
};
struct hv_in_signal_event {      /* 0x005D, 8 bytes (a fast call passes them in RDX) */
    uint32_t connection_id;
    uint16_t flag_number;
    uint16_t rsvdz;
};

_Static_assert(sizeof(struct hv_message_header) == 16, "HV_MESSAGE_HEADER is 16 bytes");
_Static_assert(sizeof(struct hv_message) == HV_MESSAGE_SIZE, "HV_MESSAGE is 256 bytes");
_Static_assert(sizeof(struct hv_timer_message_payload) == 24, "TimerExpired payload is 24 bytes");
_Static_assert(sizeof(struct hv_port_info) == 24, "HV_PORT_INFO is 24 bytes");
_Static_assert(sizeof(struct hv_connection_info) == 32, "HV_CONNECTION_INFO is 32 bytes");
_Static_assert(sizeof(struct hv_in_create_port) == 56, "CreatePort input is 56 bytes");
_Static_assert(sizeof(struct hv_in_connect_port) == 72, "ConnectPort input is 72 bytes");
_Static_assert(sizeof(struct hv_in_delete_port) == 16, "layout");
_Static_assert(sizeof(struct hv_in_disconnect_port) == 16, "layout");
_Static_assert(sizeof(struct hv_in_post_message) == 256, "PostMessage input is 256 bytes");
_Static_assert(sizeof(struct hv_in_signal_event) == 8, "SignalEvent input is 8 bytes");
_Static_assert(offsetof(struct hv_in_connect_port, connection_info) == 32, "layout");
_Static_assert(offsetof(struct hv_in_create_port, port_info) == 24, "layout");
/* ==== end of SynIC, ports and timers ========================================================== */

#endif /* HV_ABI_H */
