/* libFuzzer harness for the core's hypercall entry point: every input is a script of hypercalls
 * (control word + input block) issued by the root or by an unprivileged child on a fresh host.
 *
 * The host is built the way the parent builds one: the root creates a child, deposits pages,
 * initializes it, maps it memory and gives it a VP. The script then runs against that state, so
 * every handler sees both privileged and unprivileged callers with real partitions around them.
 * Besides the sanitizers, one oracle: a failed hypercall leaves the core's state digest unchanged
 * (INV-ATOMIC in ../shared/reference/threat-model.md).
 *
 * Persistent mode (the default): the host is built once, in fuzz/c/arena.c's arena, and put back
 * byte for byte after every input (arena.c says how), so every input starts from the same state
 * at the same addresses, as if it ran alone, without paying for a host's creation and teardown.
 * HVSIM_FUZZ_FRESH=1 builds a new host with libc's heap for every input instead and destroys it
 * after, as before (LeakSanitizer then checks the teardown). HVSIM_FUZZ_OUTCOME=1 prints, after
 * each input, a digest of every call's result and of the final state with memory and time: the
 * smoke test compares an input's outcome alone and after others.
 *
 * Script record (little-endian):  op:u8  then by op % 4
 *   0, 1  hypercall:  caller:u8 (bit 0: child, bit 1: VP 1) control:u64 len:u8 input[len * 8]
 *                     (fast calls take RDX, R8 and XMM0-5 from the same input bytes); op 1 also
 *                     checks INV-ATOMIC. The digest costs more than most calls, so the fuzzer
 *                     chooses where to pay for it rather than every call paying.
 *   2     guest store: caller:u8 page:u8 offset:u16 len:u8 bytes[len]  (a guest writing its memory)
 *   3     run:        ns:u32                                              (simulated time passes)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "hvsim.h"

#define PAGE 4096u
#define CHILD_POOL_PAGES 24u  /* deposited into the child's pool */
#define CHILD_MEM_PAGES 8u    /* mapped at the child's GPA 0.. */

struct cursor {
    const uint8_t *p;
    size_t left;
};

static int take(struct cursor *c, void *out, size_t n)
{
    if (c->left < n)
        return 0;
    memcpy(out, c->p, n);
    c->p += n;
    c->left -= n;
    return 1;
}

struct world {
    struct hv_host *h;
    uint64_t root, child;
    uint64_t root_in, root_out;   /* the root VP 0's hypercall pages (GPA = SPA for the root) */
    uint64_t child_in, child_out; /* the child VP 0's */
    uint64_t next_root_page;      /* the root's next free page for setup */
};

static uint64_t call(struct world *w, uint64_t pid, uint64_t control, const void *in, size_t len)
{
    uint64_t in_gpa = pid == w->root ? w->root_in : w->child_in;
    uint64_t out_gpa = pid == w->root ? w->root_out : w->child_out;
    if (len)
        hv_partition_write(w->h, pid, in_gpa, in, len);
    return hv_hypercall(w->h, pid, 0, control, in_gpa, out_gpa, NULL);
}

static uint64_t rep(uint16_t code, uint32_t count)
{
    return (uint64_t)code | (uint64_t)count << 32;
}

/* Build root + one initialized child with memory and a VP; 0 on success. */

/* A rep call from the root, resumed from where it stopped until all `count` elements are done
 * (reps_per_call is small); 0, or -1 if a call makes no progress. */
static int rep_all(struct world *w, uint16_t code, uint32_t count, const void *input, size_t size)
{
    for (uint32_t done = 0; done < count;) {
        uint64_t r = call(w, w->root, rep(code, count) | (uint64_t)done << 48, input, size);
        uint32_t reps = (uint32_t)(r >> 32 & 0xFFF);
        if (reps <= done)
            return -1;
        done = reps;
    }
    return 0;
}

static int build(struct world *w)
{
    struct hv_host_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.memory_bytes = 64u * PAGE; /* the smallest host: setup needs 50 pages */
    cfg.logical_processors = 1;
    cfg.smt = 1;
    cfg.root_vps = 1;
    cfg.reps_per_call = 5;
    memset(w, 0, sizeof *w);
    w->h = hv_host_create(&cfg);
    if (!w->h)
        return -1;
    uint64_t ids[4];
    if (hv_host_partitions(w->h, ids, 4) < 1)
        return -1;
    w->root = ids[0];
    struct hv_host_totals t;
    hv_host_totals(w->h, &t);
    w->root_in = t.hv_pages * PAGE;
    w->root_out = (t.hv_pages + 1) * PAGE;
    w->next_root_page = t.hv_pages + 2;

    uint8_t zero[56] = {0};
    if ((call(w, w->root, HVCALL_CREATE_PARTITION, zero, sizeof zero) & 0xFFFF) != 0)
        return -1;
    hv_partition_read(w->h, w->root, w->root_out, (uint8_t *)&w->child, 8);

    uint64_t block[1 + CHILD_POOL_PAGES];
    block[0] = w->child;
    for (uint32_t i = 0; i < CHILD_POOL_PAGES; i++)
        block[1 + i] = w->next_root_page++;
    if (rep_all(w, HVCALL_DEPOSIT_MEMORY, CHILD_POOL_PAGES, block, sizeof block) != 0)
        return -1;
    uint64_t init = w->child;
    if ((call(w, w->root, HVCALL_INITIALIZE_PARTITION, &init, 8) & 0xFFFF) != 0)
        return -1;

    uint64_t map[3 + CHILD_MEM_PAGES];
    map[0] = w->child;
    map[1] = 0;                      /* GPA page base */
    map[2] = 7;                      /* readable | writable | executable, reserved 0 */
    for (uint32_t i = 0; i < CHILD_MEM_PAGES; i++)
        map[3 + i] = w->next_root_page++;
    if (rep_all(w, HVCALL_MAP_GPA_PAGES, CHILD_MEM_PAGES, map, sizeof map) != 0)
        return -1;
    uint64_t vp[4] = {w->child, 0, 0, 0};
    if ((call(w, w->root, HVCALL_CREATE_VP, vp, sizeof vp) & 0xFFFF) != 0)
        return -1;
    w->child_in = 0;
    w->child_out = PAGE;
    return 0;
}

/* FNV-1a over the results and the final state, for HVSIM_FUZZ_OUTCOME. */
static void mix(uint64_t *acc, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        *acc = (*acc ^ b[i]) * 0x100000001B3ull;
}

static int fresh = -1, show_outcome;
static struct world pristine; /* the persistent host, as the snapshot has it */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fresh < 0) {
        const char *f = getenv("HVSIM_FUZZ_FRESH"), *o = getenv("HVSIM_FUZZ_OUTCOME");
        fresh = f && *f && *f != '0';
        show_outcome = o && *o && *o != '0';
        if (!fresh) {
            hvfz_arena_start();
            if (build(&pristine) != 0)
                abort();
            hvfz_arena_snapshot();
        }
    }
    struct world w = pristine;
    if (fresh && build(&w) != 0)
        abort(); /* the setup itself must work on every run */
    uint64_t outcome = 0xCBF29CE484222325ull;
    struct cursor c = {data, size};
    uint8_t op;
    int steps = 0;
    while (steps++ < 64 && take(&c, &op, 1)) {
        switch (op % 4) {
        case 0:
        case 1: {
            uint8_t who, qwords;
            uint64_t control;
            if (!take(&c, &who, 1) || !take(&c, &control, 8) || !take(&c, &qwords, 1))
                goto done;
            uint64_t in[128] = {0};
            size_t len = (size_t)(qwords % 128) * 8;
            if (len > c.left)
                len = c.left & ~(size_t)7;
            take(&c, in, len);
            uint64_t pid = who & 1 ? w.child : w.root;
            uint64_t in_gpa = pid == w.root ? w.root_in : w.child_in;
            uint64_t out_gpa = pid == w.root ? w.root_out : w.child_out;
            int fast = control >> 16 & 1;
            if (!fast && len) /* the guest's own stores come before the call, not in it */
                hv_partition_write(w.h, pid, in_gpa, (uint8_t *)in, len);
            uint8_t before[16], after[16]; /* hv_state_digest writes 16 bytes */
            int check = op % 4 == 1;
            if (check)
                hv_state_digest(w.h, 0, before);
            uint64_t r = fast ? hv_hypercall(w.h, pid, who >> 1 & 1, control, in[0], in[1], &in[2])
                              : hv_hypercall(w.h, pid, who >> 1 & 1, control, in_gpa, out_gpa, NULL);
            mix(&outcome, &r, sizeof r);
            if (check && (r & 0xFFFF) != 0) {
                hv_state_digest(w.h, 0, after);
                if (memcmp(before, after, sizeof before) != 0) {
                    fprintf(stderr, "INV-ATOMIC: hypercall %#llx from partition %llu failed with status %#llx "
                            "and changed the state\n", (unsigned long long)control, (unsigned long long)pid,
                            (unsigned long long)(r & 0xFFFF));
                    abort();
                } /* INV-ATOMIC: a failed hypercall changed the state */
            }
            break;
        }
        case 2: {
            uint8_t who, page, len;
            uint16_t offset;
            if (!take(&c, &who, 1) || !take(&c, &page, 1) || !take(&c, &offset, 2) || !take(&c, &len, 1))
                goto done;
            uint8_t buf[256] = {0};
            size_t n = len < c.left ? len : c.left;
            take(&c, buf, n);
            uint64_t pid = who & 1 ? w.child : w.root;
            uint64_t base = pid == w.root ? w.root_in : 0;
            hv_partition_write(w.h, pid, base + (uint64_t)(page % 16) * PAGE + offset % PAGE, buf, n);
            break;
        }
        case 3: {
            uint32_t ns;
            if (!take(&c, &ns, 4))
                goto done;
            struct hv_resume out[4];
            uint32_t resumed = hv_run(w.h, hv_now(w.h) + ns % 50000000u, out, 4);
            mix(&outcome, &resumed, sizeof resumed);
            break;
        }
        }
    }
done:
    if (show_outcome) {
        uint8_t state[16];
        uint64_t now = hv_now(w.h);
        hv_state_digest(w.h, 1, state);
        mix(&outcome, state, sizeof state);
        mix(&outcome, &now, sizeof now);
        printf("outcome %016llx\n", (unsigned long long)outcome);
        fflush(stdout);
    }
    if (fresh)
        hv_host_destroy(w.h);
    else
        hvfz_arena_restore();
    return 0;
}
