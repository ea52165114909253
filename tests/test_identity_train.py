"""The real large label set end to end, at tiny size: `dualvae synth` writes persons (identity_CelebA.txt),
`dualvae train --labels attributes,identity` trains the dual head over the 40 attributes plus one column per
training identity (sparse positives, the in-kernel hashed mask), and `dualvae transfer` moves faces toward an
identity's dual vector."""
import torch

from dualvae.cli import main
from dualvae.data import read_celeba_identities, read_celeba_partition
from dualvae.model import DualVAE


def test_synth_train_over_attributes_and_identities_then_transfer(tmp_path):
    root, run = tmp_path / "synth", tmp_path / "run"
    assert main(["synth", "--out", str(root), "--num", "48", "--images-per-person", "4", "--workers", "1"]) == 0
    identities = read_celeba_identities(str(root))
    partition = read_celeba_partition(str(root))
    train_ids = sorted({identities[f] for f, s in partition.items() if s == 0})
    assert len(train_ids) >= 5

    assert main(["train", "--data", str(root), "--out", str(run), "--labels", "attributes,identity",
                 "--steps", "6", "--batch-size", "8", "--image-size", "16", "--latent-dim", "8", "--width", "8",
                 "--missing-ratio", "0.3", "--data-backend", "pil", "--workers", "0", "--log-every", "1",
                 "--no-progress"]) == 0
    model = DualVAE.load(str(run / "model.pt"))
    names = model.attr_names
    assert len(names) == 40 + len(train_ids) and model.U.shape == (len(names), 8)
    assert names[40:] == [f"identity_{i}" for i in train_ids]
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 7 and "nan" not in log[-1].lower()
    torch.manual_seed(0)  # the initial weights of the run (seed 0): training moved the dual vectors
    start = DualVAE(16, 3, 8, len(names), 8)
    assert not torch.allclose(start.U, model.U)

    target = names[40]
    grid = tmp_path / "grid.png"
    assert main(["transfer", "--model", str(run / "model.pt"), "--data", str(root), "--out", str(grid),
                 "--domains", f"Smiling,{target}", "--num-images", "3"]) == 0
    assert grid.stat().st_size > 0
