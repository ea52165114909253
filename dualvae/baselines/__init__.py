"""Baseline transfer models (CVAE, FaderNetworks, StarGAN) — see the experiments issue."""
