"""The key-value pair exchange integration service: items shared between host and guest."""
from drivers.device import DeviceType
from drivers.ic.kvp.protocol import CLASS_ID
from drivers.ic.kvp.vsc import KvpVsc
from drivers.ic.kvp.vsp import KvpVsp

DEVICE = DeviceType(name="kvp", class_id=CLASS_ID, vsp=KvpVsp, vsc=KvpVsc,
                    description="Hyper-V KVP IC: host and guest exchange key-value items in five pools")
