"""The paper's experiments (Sec. 5) as commands: Table 1, Figures 4, 5 and 6, and training curves.

    dualvae experiment table1|fig4|fig5|fig6|curves|all --data DIR --out DIR [--seeds 3]
                       [--budget tiny|small|medium|long|paper] [--jobs 1] [--source-labels predicted|dataset]

Every command works from one cache of trained runs, OUT/runs/<budget>/<model>[-n20]-s<missing ratio>-seed<seed>/,
so the commands share their runs, a second command trains nothing it already has, and an interrupted command
picks up where it stopped (DualVAE resumes from its last step checkpoint; a baseline that was cut short retrains).
A cached run trained with other steps than the budget's is refused, not silently reused.

One run = train the model on the training split with the missing-label mask I = draw_label_mask(seed, s), keeping
`curve_points` checkpoints along the way; choose each transfer strength on the validation split; score the test
split. The paper does not say how it set the strengths, so two protocols:
- tuned: every model's strength chosen on validation from a grid that brackets the optimum (a choice on a grid
  edge extends the grid: doubled above, halved below, until the optimum is interior);
- unit_strength: each label-conditioned baseline at its own unit strength (CVAE y_i <- 1, FaderNetworks
  alpha = 1, StarGAN c_i = 1); DualVAE at the lambda chosen on validation (lambda is its only knob).
The test split is scored as `test_subsets` disjoint subsets of `subset_images` images (CIS mean and std over them,
as the paper's "calculated several times"), at 40 domains and at 20 (the top-left 20 x 20 block of the same M);
models trained on the first 20 attributes only (`-n20` runs) are scored at 20 domains. With fewer attributes than
40 the domain counts that do not exist are skipped (and the command says so). One classifier f, trained once per
budget on the training split with every label, scores every model. A failed model (noise, or one image for every
input) is told apart by its reconstruction ratio (`baselines.common.reconstruction_ratio`), and a model whose
transfers leave the data by the realism distance (`realism`: the Fréchet distance in f's features to real images,
against pixel noise); each run also reports f's transfer accuracy and a curve of tuned validation CIS over its
checkpoints, from which the tables call it plateaued or still rising. StarGAN's s = 0.9 runs are made only when
StarGAN works at s = 0 (otherwise the claim that it fails at s = 0.9 is untestable and the command says so).

Budgets: `tiny` (CI: seconds), `small` (a quick look: 32x32, hundreds of steps), `medium` (32x32, 1,500 steps),
`long` (the committed results: 32x32, 6,400 steps, 8 scored checkpoints, sized for 2 CPU cores with --jobs 2),
`paper` (the full protocol: 64x64, the original architectures, long training; for a GPU and real CelebA).

Modules: budgets (what is compared, at what size), prepare (the data and f, once per OUT), runs (one run: its
training and cache folder), evaluate (one run's scores), realism (transfer accuracy and the realism distance),
pool (every run a command needs), figures (Table 1, Figs. 4-6, training curves), claims (the verdicts), cli (the
subcommand's ExperimentConfig and run_experiment).
"""
from dualvae.experiments.cli import ExperimentConfig, run_experiment

__all__ = ["ExperimentConfig", "run_experiment"]
