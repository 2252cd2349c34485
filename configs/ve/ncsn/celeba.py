"""NCSN (v1, Song & Ermon 2019) on CelebA: 10 noise levels from 1 to 0.01, annealed Langevin.

``python main.py --config configs/ve/ncsn/celeba.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The CIFAR-10 twin (ve/ncsn/cifar10) on CelebA: the same network, noise levels, sampler and
optimizer, with the CelebA data of default_celeba_configs (64-px images) and its evaluation of
every checkpoint from the first, with sampling.
"""

import ml_collections

from configs.ve.ncsn.cifar10 import get_config as get_cifar10_config


def get_config() -> ml_collections.ConfigDict:
  config = get_cifar10_config()
  config.eval.begin_ckpt = 1
  config.eval.enable_sampling = True
  config.data.dataset = "CELEBA"
  config.data.image_size = 64
  return config
