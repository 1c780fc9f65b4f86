/* The pager callback the core calls for an absent page (native/api/migration.h, hv_pager_fn),
 * implemented in Python (hypervisor/_binding.py, @ffi.def_extern) and handed to hv_pager_install
 * as a function pointer, so that no C file links against Python. cdef only: no C file includes it. */
extern "Python" int hv_pager_upcall(struct hv_host *, uint64_t, uint64_t, uint32_t, uint8_t *, uint64_t *, uint32_t *);
