"""LSUN / 256-px defaults (bedroom, church_outdoor; also the base of CelebA-HQ and FFHQ at 256).

They are the shared defaults (default_configs) at 256 px: a smaller batch (64) trained longer
(2.4 M iterations, preemption checkpoints every 5000 steps), 2000 noise scales up to
sigma_max 378 with no dropout, a corrector signal-to-noise ratio of 0.075, and an evaluation
of checkpoints 50 to 96 in batches of 512. The TFDS source, 3 channels, random flips and [0, 1]
data are inherited.
"""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_configs()
  config.training.batch_size = 64
  config.training.n_iters = 2400001
  config.training.snapshot_freq_for_preemption = 5000

  config.sampling.snr = 0.075

  config.eval.begin_ckpt = 50
  config.eval.end_ckpt = 96
  config.eval.batch_size = 512

  config.data.dataset = "LSUN"
  config.data.category = "bedroom"    # LSUN scene category (tfds: lsun/<category>)
  config.data.image_size = 256

  config.model.sigma_max = 378.0
  config.model.num_scales = 2000
  config.model.dropout = 0.0
  return config
