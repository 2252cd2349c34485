"""DDPM++ on CIFAR-10, VP SDE, discrete (DDPM) training with integer levels.

``python main.py --config configs/vp/cifar10_ddpmpp.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The network, data and optimizer are those of the continuous twin (vp/cifar10_ddpmpp_continuous);
only the training and sampler differ: the discrete DDPM loss over the model.num_scales levels,
sampled with DDPM's ancestral sampling instead of the Euler-Maruyama discretization of the SDE.
"""

import ml_collections

from configs.vp.cifar10_ddpmpp_continuous import get_config as get_continuous_config


def get_config() -> ml_collections.ConfigDict:
  config = get_continuous_config()
  config.training.continuous = False
  config.sampling.predictor = "ancestral_sampling"
  return config
