"""Fused CPU kernels for the RotaFormer head (placeholder until Part B lands)."""
