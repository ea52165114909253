"""What the experiments compare and at what size: the models, protocols and missing ratios, the paper's Table 1,
and the budgets (image size, steps, networks and strength grids per model)."""
from __future__ import annotations

from dataclasses import dataclass, field

MODELS = ("dualvae", "cvae", "fader", "stargan")
LABELS = {"dualvae": "DualVAE", "cvae": "CVAE", "fader": "FaderNetworks", "stargan": "StarGAN"}
COLORS = {"dualvae": "tab:red", "cvae": "tab:blue", "fader": "tab:green", "stargan": "tab:purple"}
# The paper does not say how it set any model's transfer strength. "tuned": every model's strength chosen on
# validation the same way; "unit_strength": the baselines at their unit strength, DualVAE's λ chosen on validation.
PROTOCOLS = ("tuned", "unit_strength")
PROTOCOL_TITLES = {"tuned": "every model's strength tuned on validation",
                   "unit_strength": "baselines at unit strength, DualVAE's λ tuned on validation"}
MISSING_RATIOS = (0.0, 0.5, 0.9, 0.99)  # Fig. 6
DOMAIN_COUNTS = (20, 40)  # Table 1's columns
COLUMN_TITLES = {"20": "20 domains (block)", "20_trained": "20 domains (trained on 20)", "40": "40 domains"}
# Table 1 of the paper (CelebA, Inception-v3 f): mean and std of CIS over repeated runs.
PAPER_TABLE1 = {"cvae": {20: (-0.112, 0.007), 40: (-0.152, 0.006)},
                "fader": {20: (0.075, 0.008), 40: (-0.002, 0.003)},
                "stargan": {20: (0.068, 0.188), 40: (0.050, 0.032)},
                "dualvae": {20: (0.163, 0.025), 40: (0.140, 0.020)}}
FIG6_DOMAINS = ("Blond_Hair", "Eyeglasses", "Mustache")  # the attributes of the paper's Fig. 6 images
FAILED_RATIO = 0.8  # reconstruction ratio above which a model counts as failed (noise or one image for all)
PLATEAU_TOL = 0.01  # a run has plateaued when its last two curve points differ by at most max(this, the seed std)
MAX_GRID_EXTENSIONS = 8


@dataclass
class Budget:
    image_size: int
    batch_size: int
    classifier_steps: int
    classifier_width: int
    val_images: int
    subset_images: int  # images per test subset
    test_subsets: int  # disjoint test subsets (CIS mean and std over them)
    grid_images: int
    steps: dict  # model -> training steps (StarGAN: discriminator steps; G every n_critic-th)
    configs: dict  # model -> network config (keyword arguments)
    lams: dict  # model -> the starting strength grid of the tuned protocol (extended when the choice is an edge)
    batch_sizes: dict = field(default_factory=dict)  # per-model batch size where it differs
    curve_points: int = 3  # checkpoints per run scored for the training curves (the last is the final model)

    @property
    def test_images(self) -> int:
        return self.subset_images * self.test_subsets


UNIT = {"dualvae": None, "cvae": 1.0, "fader": 1.0, "stargan": 1.0}  # paper-default strength (None: tuned)
# The networks of the CPU budgets (32x32) and the starting grids of the tuned protocol (extended as needed).
CPU_NETS = {"dualvae": dict(width=16, latent_dim=64), "cvae": dict(width=16, latent_dim=64),
            "fader": dict(width=8, max_channels=128), "stargan": dict(g_width=12, d_width=16, res_blocks=2)}
GRIDS = {"dualvae": [8.0, 16.0, 32.0, 64.0, 128.0], "cvae": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
         "fader": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "stargan": [0.5, 1.0, 2.0, 4.0]}

BUDGETS = {
    "tiny": Budget(
        image_size=16, batch_size=8, classifier_steps=3, classifier_width=8, val_images=4, subset_images=2,
        test_subsets=2, grid_images=2,
        steps={"dualvae": 3, "cvae": 3, "fader": 3, "stargan": 5},
        configs={"dualvae": dict(width=8, latent_dim=8), "cvae": dict(width=8, latent_dim=8),
                 "fader": dict(width=8, max_channels=32), "stargan": dict(g_width=8, d_width=8, res_blocks=1)},
        lams={"dualvae": [1.0, 4.0], "cvae": [1.0, 2.0], "fader": [1.0, 2.0], "stargan": [1.0, 2.0]},
        curve_points=2),
    "small": Budget(
        image_size=32, batch_size=64, classifier_steps=1500, classifier_width=16, val_images=160,
        subset_images=160, test_subsets=1, grid_images=4,
        steps={"dualvae": 300, "cvae": 300, "fader": 300, "stargan": 300}, configs=CPU_NETS, lams=GRIDS,
        batch_sizes={"stargan": 16}),
    "medium": Budget(
        image_size=32, batch_size=64, classifier_steps=4000, classifier_width=32, val_images=160,
        subset_images=160, test_subsets=5, grid_images=4,
        steps={"dualvae": 1500, "cvae": 1500, "fader": 1500, "stargan": 6000}, configs=CPU_NETS, lams=GRIDS,
        batch_sizes={"stargan": 16}),
    "paper": Budget(
        image_size=64, batch_size=64, classifier_steps=20000, classifier_width=32, val_images=160,
        subset_images=160, test_subsets=5, grid_images=8,
        steps={"dualvae": 50000, "cvae": 50000, "fader": 100000, "stargan": 200000},
        configs={"dualvae": dict(width=32, latent_dim=128), "cvae": dict(width=32, latent_dim=128),
                 "fader": dict(width=16, max_channels=512), "stargan": dict(g_width=64, d_width=64, res_blocks=6)},
        lams=GRIDS, batch_sizes={"stargan": 16}, curve_points=5),
}
# Trained to the plateau on 2 CPU cores: DualVAE, CVAE and FaderNetworks see the same number of examples, with
# `curve_points` scored checkpoints so that each run can be called plateaued or still rising.
BUDGETS["long"] = Budget(
    image_size=32, batch_size=64, classifier_steps=4000, classifier_width=32, val_images=160,
    subset_images=160, test_subsets=5, grid_images=4,
    steps={"dualvae": 6400, "cvae": 6400, "fader": 6400, "stargan": 6000}, configs=CPU_NETS, lams=GRIDS,
    batch_sizes={"stargan": 16}, curve_points=8)


def domain_counts(num_attrs: int) -> list[int]:
    """Table 1's domain counts that exist for a dataset of `num_attrs` attributes (all of them when it has fewer
    than 20)."""
    return [k for k in DOMAIN_COUNTS if k <= num_attrs] or [num_attrs]
