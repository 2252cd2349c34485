"""CIFAR-10 defaults (32x32x3), as in the paper's CIFAR-10 experiments.

The shared defaults (default_configs) already are CIFAR-10's: TFDS CIFAR10 at 32x32x3 with
random flips in [0, 1], batch 128 for 1.3 M iterations, sigma_max 50 and a corrector
signal-to-noise ratio of 0.16. Only the evaluation differs: it starts at checkpoint 9 and does
not draw samples (FID) unless asked to.
"""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_configs()
  config.eval.begin_ckpt = 9
  config.eval.enable_sampling = False
  return config
