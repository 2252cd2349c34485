"""CelebA defaults (64x64x3, the authors' center crop), as in the paper's CelebA experiments.

They are the shared defaults (default_configs) on CelebA: the dataset at 64 px, sigma_max 90
(about the largest distance between two training images) and a corrector signal-to-noise ratio
of 0.17. Batch 128, 1.3 M iterations and the evaluation of checkpoints 1 to 26 with sampling are
inherited.
"""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_configs()
  config.sampling.snr = 0.17
  config.data.dataset = "CELEBA"
  config.data.image_size = 64
  config.model.sigma_max = 90.0
  return config
