/* arena.c: the heap and mapping calls of the core in the hypercall fuzz build (fuzz/c/arena.h
 * renames them), so the harness can build one host, snapshot it, and put it back byte for byte
 * after every input instead of building a new host each time.
 *
 * Before hvfz_arena_start() (and for good in the harness's fresh mode) every call goes straight to
 * libc, that is to ASan's allocator. After it:
 *  - allocations are cut from one reserved region (the arena), bump-allocated and never reused
 *    before the next restore. Each chunk is a header, the caller's bytes and a redzone; header and
 *    redzone are poisoned, a freed chunk is poisoned whole, so ASan still reports overflows,
 *    use after free and (here, with the header's state) double and invalid frees. malloc's bytes
 *    are filled with 0xbe as ASan fills them, so nothing read uninitialized depends on what an
 *    earlier input left there.
 *  - mmap and munmap are recorded: the mappings made before the snapshot (the SPA memory file
 *    and the core's page tables) have their contents saved; those made after it (grant views)
 *    are unmapped at the restore.
 * The restore puts back the arena's bytes below the snapshot's top, every saved mapping's bytes,
 * and the poisoning (chunks made since are poisoned, chunks freed since are live again): the
 * host is then in exactly the state the snapshot saw, at the same addresses, so an input behaves
 * the same whatever ran before it (tests/test_fuzz_smoke.py checks it).
 *
 * What the arena cannot check: leaks (LeakSanitizer sees no heap of the core here); the harness's
 * fresh mode (HVSIM_FUZZ_FRESH=1) uses libc's heap and a new host per input, and fuzz/run.py runs
 * the learned corpus through it after a run. */
#define HVSIM_FUZZ_ARENA_IMPL
#include "arena.h"

#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define HVFZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define HVFZ_ASAN 1
#endif
#ifdef HVFZ_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#define NO_ASAN __attribute__((no_sanitize("address", "undefined")))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#define NO_ASAN
#endif

#define ARENA_BYTES (1ull << 32) /* reserved address space; only what is used is touched */
#define ALIGN 16u
#define REDZONE 32u
#define MAGIC 0x6876667a63686b31ull

enum { LIVE = 1, FREED = 2 };

struct chunk { /* 32 bytes, so the caller's bytes are 16-aligned */
    uint64_t magic;
    uint64_t size;  /* what the caller asked for */
    uint64_t state; /* LIVE or FREED */
    uint64_t span;  /* header + bytes + redzone */
};

struct mapping {
    uint8_t *addr;
    size_t len;
    uint8_t *copy;  /* its bytes at the snapshot (mappings from before it) */
    uint8_t *zeros; /* per 4 KiB page of it: all zeros at the snapshot (most of the SPA is) */
};

static int active, snapped;
static uint8_t *arena;
static size_t top, snap_top;
static int arena_fd = -1;
static size_t *freed_old; /* offsets of chunks from before the snapshot freed since */
static size_t nr_freed_old, cap_freed_old;
static struct mapping *old_maps, *new_maps;
static size_t nr_old_maps, cap_old_maps, nr_new_maps, cap_new_maps;

static void die(const char *what)
{
    fprintf(stderr, "hvsim fuzz arena: %s\n", what);
    abort();
}

static void *grow(void *v, size_t *cap, size_t item)
{
    size_t n = *cap ? *cap * 2 : 64;
    void *p = realloc(v, n * item);
    if (!p)
        die("out of memory for its own bookkeeping");
    *cap = n;
    return p;
}

/* The arena's headers and redzones are poisoned: they are read and written only here. */
NO_ASAN static struct chunk *header_of(void *p)
{
    uint8_t *b = p;
    if (b < arena + sizeof(struct chunk) || b >= arena + top || (size_t)(b - arena) % ALIGN)
        die("free or realloc of a pointer the arena never handed out");
    struct chunk *c = (struct chunk *)(void *)b - 1;
    if (c->magic != MAGIC)
        die("free or realloc of a pointer the arena never handed out");
    if (c->state != LIVE)
        die("double free (or realloc of a freed pointer)");
    return c;
}

NO_ASAN static void header_set(struct chunk *c, uint64_t size, uint64_t state, uint64_t span)
{
    c->magic = MAGIC;
    c->size = size;
    c->state = state;
    c->span = span;
}

NO_ASAN static uint64_t header_size(const struct chunk *c) { return c->size; }

NO_ASAN static void mark_freed(struct chunk *c) { c->state = FREED; }

/* Put [dst, dst + len) back to src's bytes, or to zeros where the snapshot's page was all zeros
 * (src == NULL: then only dst is read). A page is compared whole first (a loop the compiler
 * vectorizes), and written only if it differs: most pages do not. Not memcpy: ASan's interceptor
 * would report the poisoned bytes it crosses. */
NO_ASAN static void put_back(uint8_t *dst, const uint8_t *src, size_t len)
{
    uint64_t *d = (uint64_t *)(void *)dst;
    const uint64_t *s = (const uint64_t *)(const void *)src;
    size_t words = len / 8;
    uint64_t diff = 0;
    if (s)
        for (size_t i = 0; i < words; i++)
            diff |= d[i] ^ s[i];
    else
        for (size_t i = 0; i < words; i++)
            diff |= d[i];
    if (diff) {
        if (s)
            for (size_t i = 0; i < words; i++)
                d[i] = s[i];
        else
            for (size_t i = 0; i < words; i++)
                d[i] = 0;
    }
    for (size_t i = words * 8; i < len; i++)
        dst[i] = src ? src[i] : 0;
}

NO_ASAN static int all_zero(const uint8_t *p, size_t len)
{
    uint8_t any = 0;
    for (size_t i = 0; i < len; i++)
        any |= p[i];
    return !any;
}

NO_ASAN static void take_copy(uint8_t *dst, const uint8_t *src, size_t len)
{
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i];
}

void *hvfz_malloc(size_t size)
{
    if (!active)
        return malloc(size);
    size_t body = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
    if (size > ARENA_BYTES || body + sizeof(struct chunk) + REDZONE > ARENA_BYTES - top)
        return NULL; /* as ASan's allocator does with allocator_may_return_null=1 */
    size_t span = sizeof(struct chunk) + body + REDZONE;
    struct chunk *c = (struct chunk *)(void *)(arena + top);
    top += span;
    POISON(c, span);
    header_set(c, size, LIVE, span);
    UNPOISON(c + 1, size);
    memset(c + 1, 0xbe, size);
    return c + 1;
}

void *hvfz_calloc(size_t n, size_t size)
{
    if (!active)
        return calloc(n, size);
    if (size && n > SIZE_MAX / size)
        return NULL;
    void *p = hvfz_malloc(n * size);
    if (p)
        memset(p, 0, n * size);
    return p;
}

void hvfz_free(void *p)
{
    if (!active) {
        free(p);
        return;
    }
    if (!p)
        return;
    struct chunk *c = header_of(p);
    mark_freed(c);
    POISON(p, header_size(c));
    size_t off = (size_t)((uint8_t *)c - arena);
    if (snapped && off < snap_top) {
        if (nr_freed_old == cap_freed_old)
            freed_old = grow(freed_old, &cap_freed_old, sizeof *freed_old);
        freed_old[nr_freed_old++] = off;
    }
}

void *hvfz_realloc(void *p, size_t size)
{
    if (!active)
        return realloc(p, size);
    if (!p)
        return hvfz_malloc(size);
    uint64_t old = header_size(header_of(p));
    void *q = hvfz_malloc(size);
    if (!q)
        return NULL; /* the old block stays the caller's */
    memcpy(q, p, old < size ? old : size);
    hvfz_free(p);
    return q;
}

static int overlaps(const struct mapping *m, const uint8_t *a, size_t len)
{
    return a < m->addr + m->len && m->addr < a + len;
}

void *hvfz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    void *r = mmap(addr, len, prot, flags, fd, off);
    if (!active || r == MAP_FAILED)
        return r;
    if (flags & MAP_FIXED) { /* inside a mapping already recorded */
        for (size_t i = 0; snapped && i < nr_old_maps; i++)
            if (overlaps(&old_maps[i], r, len))
                die("the core mapped over memory it had at the snapshot");
        return r;
    }
    struct mapping m = {r, len, NULL, NULL};
    if (!snapped) {
        if (nr_old_maps == cap_old_maps)
            old_maps = grow(old_maps, &cap_old_maps, sizeof *old_maps);
        old_maps[nr_old_maps++] = m;
    } else {
        if (nr_new_maps == cap_new_maps)
            new_maps = grow(new_maps, &cap_new_maps, sizeof *new_maps);
        new_maps[nr_new_maps++] = m;
    }
    return r;
}

int hvfz_munmap(void *addr, size_t len)
{
    if (active) {
        uint8_t *a = addr;
        for (size_t i = 0; snapped && i < nr_old_maps; i++)
            if (overlaps(&old_maps[i], a, len))
                die("the core unmapped memory it had at the snapshot");
        for (size_t i = 0; i < nr_new_maps;) {
            struct mapping *m = &new_maps[i];
            if (!overlaps(m, a, len)) {
                i++;
            } else if (a <= m->addr && m->addr + m->len <= a + len) {
                *m = new_maps[--nr_new_maps]; /* gone whole */
            } else {
                die("the core unmapped part of a mapping"); /* the core never does: whole windows only */
            }
        }
    }
    return munmap(addr, len);
}

void hvfz_arena_start(void)
{
    arena_fd = memfd_create("hvsim-fuzz-arena", MFD_CLOEXEC);
    if (arena_fd < 0 || ftruncate(arena_fd, (off_t)ARENA_BYTES) != 0)
        die("cannot make the arena's file");
    arena = mmap(NULL, ARENA_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, arena_fd, 0);
    if (arena == MAP_FAILED)
        die("cannot reserve the arena");
    active = 1;
}

int hvfz_arena_active(void) { return active; }

static size_t page_up(size_t n) { return (n + 4095) & ~(size_t)4095; }

void hvfz_arena_snapshot(void)
{
    snap_top = top;
    /* The arena's bytes go into its file, and its private copies are dropped: from now on every
     * page reads the snapshot until it is written (copy on write), and dropping the written
     * copies again (the restore) costs what the input touched, not the arena's size. */
    uint8_t *bytes = malloc(snap_top ? snap_top : 1);
    if (!bytes)
        die("out of memory for the snapshot");
    take_copy(bytes, arena, snap_top);
    for (size_t done = 0; done < snap_top;) {
        ssize_t n = pwrite(arena_fd, bytes + done, snap_top - done, (off_t)done);
        if (n <= 0)
            die("cannot write the snapshot");
        done += (size_t)n;
    }
    free(bytes);
    if (madvise(arena, page_up(snap_top), MADV_DONTNEED) != 0)
        die("cannot drop the arena's pages");
    for (size_t i = 0; i < nr_old_maps; i++) {
        struct mapping *m = &old_maps[i];
        m->copy = malloc(m->len);
        m->zeros = malloc(m->len / 4096 + 1);
        if (!m->copy || !m->zeros)
            die("out of memory for the snapshot");
        take_copy(m->copy, m->addr, m->len);
        for (size_t at = 0; at < m->len; at += 4096)
            m->zeros[at / 4096] = (uint8_t)all_zero(m->copy + at, m->len - at < 4096 ? m->len - at : 4096);
    }
    snapped = 1;
}

void hvfz_arena_restore(void)
{
    for (size_t i = 0; i < nr_new_maps; i++)
        munmap(new_maps[i].addr, new_maps[i].len);
    nr_new_maps = 0;
    POISON(arena + snap_top, top - snap_top); /* chunks made since: gone */
    /* Every page written since reads the snapshot again (headers included: chunks freed since
     * are LIVE again); above the snapshot's top the file holds zeros. */
    if (madvise(arena, page_up(top), MADV_DONTNEED) != 0)
        die("cannot drop the arena's pages");
    top = snap_top;
    /* The core's own mappings (the SPA memory file, shared with grant views; its page tables)
     * are put back by comparison: they are small for the harness's 64-page host. */
    for (size_t i = 0; i < nr_old_maps; i++) {
        struct mapping *m = &old_maps[i];
        for (size_t at = 0; at < m->len; at += 4096)
            put_back(m->addr + at, m->zeros[at / 4096] ? NULL : m->copy + at, m->len - at < 4096 ? m->len - at : 4096);
    }
    for (size_t i = 0; i < nr_freed_old; i++) {
        struct chunk *c = (struct chunk *)(void *)(arena + freed_old[i]);
        UNPOISON(c + 1, header_size(c));
    }
    nr_freed_old = 0;
}
