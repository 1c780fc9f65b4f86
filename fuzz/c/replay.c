/* A main() for the C fuzz harnesses without libFuzzer: runs LLVMFuzzerTestOneInput once on each
 * file named on the command line. The test suite builds it with gcc under ASan and UBSan to run
 * every seed of the corpus (tests/test_fuzz_smoke.py), so `make test` needs no clang. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 2;
        }
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        uint8_t *data = malloc(n > 0 ? (size_t)n : 1); /* exact size: ASan sees reads past it */
        if (!data || fread(data, 1, (size_t)n, f) != (size_t)n) {
            fprintf(stderr, "%s: cannot read\n", argv[i]);
            return 2;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(data, (size_t)n);
        free(data);
    }
    printf("ran %d inputs\n", argc - 1);
    return 0;
}
