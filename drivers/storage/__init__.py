"""Synthetic SCSI storage: VHD files and the storvsp/storvsc pair."""
from drivers.device import DeviceType
from drivers.storage.protocol import CLASS_ID
from drivers.storage.vsc import StorVsc
from drivers.storage.vsp import StorVsp

# Rings of 16 pages (15 data pages, 60 KiB) each way: 64 outstanding requests of 256 KiB fit
# the guest->host ring (a GPA-direct EXECUTE_SRB of 64 PFNs takes 624 bytes).
DEVICE = DeviceType(name="storage", class_id=CLASS_ID, vsp=StorVsp, vsc=StorVsc,
                    description="synthetic SCSI controller (storvsp/storvsc): its disks, LUN 0..63, on VHD files",
                    ring_pages=16)
