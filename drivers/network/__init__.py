"""Synthetic networking: Ethernet/802.1Q frames, the parent's virtual switch and its packet captures."""
