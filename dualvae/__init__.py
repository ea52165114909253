"""DualVAE: dual-space learning with variational autoencoders (Okamoto et al.)."""
