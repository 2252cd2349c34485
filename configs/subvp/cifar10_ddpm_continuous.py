"""DDPM architecture on CIFAR-10 trained with the continuous sub-VP SDE.

``python main.py --config configs/subvp/cifar10_ddpm_continuous.py --mode train`` (then
``--mode eval`` or ``--mode sample``).

The network, data and optimizer are those of the VP twin; only the SDE differs.
"""

import ml_collections

from configs.vp.ddpm.cifar10_continuous import get_config as get_vp_config


def get_config() -> ml_collections.ConfigDict:
  config = get_vp_config()
  config.training.sde = "subvpsde"
  return config
