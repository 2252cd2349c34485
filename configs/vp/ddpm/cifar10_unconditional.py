"""DDPM on CIFAR-10 without time conditioning (NCSNv2's technique 3).

``python main.py --config configs/vp/ddpm/cifar10_unconditional.py --mode train`` (then
``--mode eval`` or ``--mode sample``).

The twin (vp/ddpm/cifar10) with a network that is not told the noise level (model.conditional
False); the data, discrete DDPM training, ancestral sampling and optimizer are unchanged.
"""

import ml_collections

from configs.vp.ddpm.cifar10 import get_config as get_conditional_config


def get_config() -> ml_collections.ConfigDict:
  config = get_conditional_config()
  config.model.conditional = False
  return config
