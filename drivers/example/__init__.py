"""The example device (echo): the one a plugin author copies. See README.md beside it."""
from drivers.device import DeviceType
from drivers.example.protocol import CLASS_ID
from drivers.example.vsc import EchoVsc
from drivers.example.vsp import EchoVsp

DEVICE = DeviceType(name="echo", class_id=CLASS_ID, vsp=EchoVsp, vsc=EchoVsc,
                    description="example device: version negotiation, then echoes packets")
