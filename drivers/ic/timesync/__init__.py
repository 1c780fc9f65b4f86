"""The time-synchronization integration service: the guest's clock follows the host's."""
from drivers.device import DeviceType
from drivers.ic.timesync.protocol import CLASS_ID
from drivers.ic.timesync.vsc import TimesyncVsc
from drivers.ic.timesync.vsp import TimesyncVsp

DEVICE = DeviceType(name="timesync", class_id=CLASS_ID, vsp=TimesyncVsp, vsc=TimesyncVsc,
                    description="Hyper-V time-sync IC: SYNC at start and restore, periodic SAMPLEs")
