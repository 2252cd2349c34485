"""NCSN++ on CelebA 64x64, VE SDE, discrete (SMLD) training.

``python main.py --config configs/ve/celeba_ncsnpp.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The CIFAR-10 twin (ve/cifar10_ncsnpp) on CelebA: the same network, SDE, discrete loss and
optimizer, with the CelebA data and settings of default_celeba_configs -- 64-px images,
sigma_max 90, a corrector signal-to-noise ratio of 0.17, and an evaluation of every checkpoint
from the first, with sampling.
"""

import ml_collections

from configs.ve.cifar10_ncsnpp import get_config as get_cifar10_config


def get_config() -> ml_collections.ConfigDict:
  config = get_cifar10_config()
  config.sampling.snr = 0.17
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.data.dataset = "CELEBA"
  config.data.image_size = 64
  config.model.sigma_max = 90.0
  return config
