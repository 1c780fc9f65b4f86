/* Little-endian fields in wire buffers (VMBus packets, SRBs, NVSP/RNDIS messages): loads and
 * stores of any alignment, one fixed-size memcpy each (swapped on big-endian hosts). The device
 * planes (storvsp.c, storvsc.c, netplane.c) share these. */
#ifndef HVSIM_LE_H
#define HVSIM_LE_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HV_LE16(v) __builtin_bswap16(v)
#define HV_LE32(v) __builtin_bswap32(v)
#define HV_LE64(v) __builtin_bswap64(v)
#else
#define HV_LE16(v) (v)
#define HV_LE32(v) (v)
#define HV_LE64(v) (v)
#endif

static inline uint16_t le16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return HV_LE16(v); }
static inline uint32_t le32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return HV_LE32(v); }
static inline uint64_t le64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return HV_LE64(v); }
static inline void put16(uint8_t *p, uint32_t v) { uint16_t w = HV_LE16((uint16_t)v); memcpy(p, &w, 2); }
static inline void put32(uint8_t *p, uint32_t v) { v = HV_LE32(v); memcpy(p, &v, 4); }
static inline void put64(uint8_t *p, uint64_t v) { v = HV_LE64(v); memcpy(p, &v, 8); }

#endif
