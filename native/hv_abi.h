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

/* GPA map flags (HV_MAP_GPA_*). */
#define HV_MAP_GPA_READABLE   0x1u
#define HV_MAP_GPA_WRITABLE   0x2u
#define HV_MAP_GPA_EXECUTABLE 0x4u   /* hvsim keeps one "execute" right (kernel and user alike) */
#define HV_MAP_GPA_VALID_MASK 0x7u

/* ---- Register names (HV_REGISTER_NAME), the subset hvsim implements ------------------------- */
#define HV_X64_REGISTER_RAX     0x00020000u /* ..R15 = 0x0002000F, in the x64 encoding order */
#define HV_X64_REGISTER_R15     0x0002000Fu
#define HV_X64_REGISTER_RIP     0x00020010u
#define HV_X64_REGISTER_RFLAGS  0x00020011u
#define HV_X64_REGISTER_CR0     0x00040000u
#define HV_X64_REGISTER_CR3     0x00040002u
#define HV_X64_REGISTER_CR4     0x00040003u
#define HV_REGISTER_VP_RUNTIME  0x00090000u /* read-only: ns of run time / 100 */
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

_Static_assert(sizeof(struct hv_in_create_partition) == 56, "CreatePartition input is 56 bytes");
_Static_assert(sizeof(struct hv_in_get_partition_property) == 16, "layout");
_Static_assert(sizeof(struct hv_in_set_partition_property) == 24, "layout");
_Static_assert(sizeof(struct hv_in_get_next_child_partition) == 16, "layout");
_Static_assert(sizeof(struct hv_in_withdraw_memory) == 16, "layout");
_Static_assert(sizeof(struct hv_out_get_memory_balance) == 16, "layout");
_Static_assert(sizeof(struct hv_in_map_gpa_pages) == 24, "layout");
_Static_assert(sizeof(struct hv_in_unmap_gpa_pages) == 24, "layout");
_Static_assert(sizeof(struct hv_in_create_vp) == 32, "layout");
_Static_assert(sizeof(struct hv_in_delete_vp) == 16, "layout");
_Static_assert(sizeof(struct hv_in_vp_registers) == 16, "layout");
_Static_assert(sizeof(struct hv_register_assoc) == 32, "HV_REGISTER_ASSOC is 32 bytes");

#endif /* HV_ABI_H */
