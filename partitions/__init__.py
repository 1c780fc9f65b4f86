"""The parent's virtualization stack (VM workers, saved state, management) and the guest model."""
