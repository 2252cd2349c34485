"""NCSN++ on CIFAR-10, VP SDE, continuous training.

``python main.py --config configs/vp/cifar10_ncsnpp_continuous.py --mode train`` (then
``--mode eval`` or ``--mode sample``).

The DDPM++ twin (vp/cifar10_ddpmpp_continuous) with the two NCSN++ changes to the network: FIR
resampling (fir_kernel) instead of nearest/box resampling, and an input pyramid merged
residually into the downsampling path (progressive_input 'residual'). Everything else, the VP
SDE training included, is unchanged.
"""

import ml_collections

from configs.vp.cifar10_ddpmpp_continuous import get_config as get_ddpmpp_config


def get_config() -> ml_collections.ConfigDict:
  config = get_ddpmpp_config()
  config.model.fir = True
  config.model.progressive_input = "residual"
  return config
