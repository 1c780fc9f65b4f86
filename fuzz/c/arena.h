/* arena.h: included first in every core source of the hypercall fuzz build (clang/gcc -include), it
 * sends the core's heap and mapping calls to fuzz/c/arena.c, which can put the whole host back to
 * a snapshot between inputs (the harness's persistent mode). The core's sources are unchanged.
 *
 * The system headers are included before the macros, so their declarations keep the real names;
 * only the core's own calls are renamed. */
#ifndef HVSIM_FUZZ_ARENA_H
#define HVSIM_FUZZ_ARENA_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* as grant.c and memory.c define it: their mmap flags and memfd_create */
#endif
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>

void *hvfz_malloc(size_t size);
void *hvfz_calloc(size_t n, size_t size);
void *hvfz_realloc(void *p, size_t size);
void hvfz_free(void *p);
void *hvfz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int hvfz_munmap(void *addr, size_t len);

#ifndef HVSIM_FUZZ_ARENA_IMPL
#define malloc hvfz_malloc
#define calloc hvfz_calloc
#define realloc hvfz_realloc
#define free hvfz_free
#define mmap hvfz_mmap
#define munmap hvfz_munmap
#endif

/* The harness's side (arena.c). */
void hvfz_arena_start(void);    /* persistent mode: from now on the core allocates in the arena */
void hvfz_arena_snapshot(void); /* remember the arena and every mapping the core has made */
void hvfz_arena_restore(void);  /* put them back exactly as they were at the snapshot */
int hvfz_arena_active(void);

#endif
