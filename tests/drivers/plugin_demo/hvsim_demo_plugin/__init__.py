"""A throw-away third-party device: the VSP answers every packet with its payload reversed
(`repeat` times over: its one setting, 1 to 3, checked when a host file names it)."""
import uuid

from drivers.device import DeviceConfigError, DeviceType, Vsc, Vsp


class ReverseVsp(Vsp):
    @classmethod
    def validate_config(cls, settings):
        config = super().validate_config(settings)   # only keys of DEVICE.defaults
        if not isinstance(config["repeat"], int) or not 1 <= config["repeat"] <= 3:
            raise DeviceConfigError("repeat", "a whole number of repeats from 1 to 3")
        return config

    def on_packets(self, packets):
        for packet in packets:
            answer = bytes(packet.payload).rstrip(b"\0")[::-1] * int(self.config.get("repeat", 1))
            self.channel.send(answer, trans_id=packet.trans_id)


class ReverseVsc(Vsc):
    def __init__(self, channel, config=None, context=None):
        super().__init__(channel, config, context)
        self.answers = []

    def ask(self, data: bytes, trans_id: int) -> None:
        self.channel.send(data, trans_id=trans_id)

    def on_packets(self, packets):
        self.answers += [(p.trans_id, bytes(p.payload).rstrip(b"\0")) for p in packets]


DEVICE = DeviceType(name="reverse", class_id=uuid.UUID("0b7e3e8c-1d2a-4c55-9e0f-3a5b6c7d8e9f"),
                    vsp=ReverseVsp, vsc=ReverseVsc, description="reverses payloads", defaults={"repeat": 1})
