"""dualvae.data: CelebA format, generated CelebA-format data."""
