"""VMBus: rings in the Hyper-V layout, the channel-management protocol, server and client."""
