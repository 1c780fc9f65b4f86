"""The shutdown integration service: the host asks the guest to shut down or restart cleanly."""
from drivers.device import DeviceType
from drivers.ic.shutdown.protocol import CLASS_ID
from drivers.ic.shutdown.vsc import ShutdownVsc
from drivers.ic.shutdown.vsp import ShutdownVsp

DEVICE = DeviceType(name="shutdown", class_id=CLASS_ID, vsp=ShutdownVsp, vsc=ShutdownVsc,
                    description="Hyper-V shutdown IC: host-initiated clean shutdown or restart")
