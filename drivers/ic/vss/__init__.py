"""The VSS (backup) integration service: the guest freezes its writes around a backup point."""
from drivers.device import DeviceType
from drivers.ic.vss.protocol import CLASS_ID
from drivers.ic.vss.vsc import VssVsc
from drivers.ic.vss.vsp import VssVsp

DEVICE = DeviceType(name="vss", class_id=CLASS_ID, vsp=VssVsp, vsc=VssVsc,
                    description="Hyper-V VSS IC: guest freeze and thaw around a host backup point")
