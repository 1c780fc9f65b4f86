/* The pager callback the core calls for an absent page (native/api/migration.h, hv_pager_fn),
 * implemented in Python (hypervisor/_binding.py, @ffi.def_extern) and handed to hv_pager_install
 * as a function pointer, so that no C file links against Python. cdef only: no C file includes it.
 * Its name starts with _cffi_ because cffi generates it: `hvsim tcb` counts it with the glue, by
 * that name when the library has no debug information. */
extern "Python" int _cffi_pager_upcall(struct hv_host *, uint64_t, uint64_t, uint32_t, uint8_t *, uint64_t *,
                                        uint32_t *);
