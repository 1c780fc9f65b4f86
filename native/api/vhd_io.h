/* VHD data movement (native/vhd_io.h has the rules: the Python VirtualDisk owns every table). */

#define HV_VHD_UNALLOCATED 4294967295
#define HV_VHD_OK 0
#define HV_VHD_NEED_METADATA 1
#define HV_VHD_PAST_EOF 2
#define HV_VHD_EINVAL 3

struct hv_vhd_disk {
    int32_t fd;
    uint32_t block_size;
    uint64_t size;
    uint32_t bitmap_size;
    uint32_t bat_entries;
    const uint32_t *bat;
    uint8_t *const *bitmaps;
    const struct hv_vhd_disk *parent;
};

int hv_vhd_read(const struct hv_vhd_disk *d, uint64_t offset, uint8_t *buf, uint64_t len, uint64_t *done);
int hv_vhd_write(const struct hv_vhd_disk *d, uint64_t offset, const uint8_t *buf, uint64_t len, uint64_t *done);
