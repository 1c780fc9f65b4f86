"""Synthetic networking: Ethernet/802.1Q frames, the parent's virtual switch and its packet captures,
and the synthetic network adapter (netvsp in the parent, netvsc in the guest) that connects a VM to
a switch port over VMBus."""


def __getattr__(name: str):
    # DEVICE is built on first use: the guest network stack imports drivers.network.frames, and
    # netvsc imports that stack, so importing the adapter here eagerly would be circular.
    if name == "DEVICE":
        from drivers.device import DeviceType
        from drivers.network.protocol import CLASS_ID
        from drivers.network.vsc import NetVsc
        from drivers.network.vsp import NetVsp

        device = DeviceType(name="network", class_id=CLASS_ID, vsp=NetVsp, vsc=NetVsc, ring_pages=16,
                            guest_buffer_pages=96,  # 64 receive + 32 send pages (the VSC defaults)
                            description="synthetic network adapter: NVSP and RNDIS over VMBus to a switch port")
        globals()["DEVICE"] = device
        return device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
