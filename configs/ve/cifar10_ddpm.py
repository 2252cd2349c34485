"""DDPM architecture on CIFAR-10 trained with SMLD (discrete VE SDE), PC sampling.

``python main.py --config configs/ve/cifar10_ddpm.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The network (and its size) is that of the DDPM twin (vp/ddpm/cifar10); the training follows
SMLD instead: the VE SDE with its summed loss on [0, 1] data, a network output divided by sigma,
an EMA rate of 0.999, and reverse-diffusion predictor plus Langevin corrector sampling.
"""

import ml_collections

from configs.vp.ddpm.cifar10 import get_config as get_vp_config


def get_config() -> ml_collections.ConfigDict:
  config = get_vp_config()
  config.training.sde = "vesde"
  config.training.reduce_mean = False
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.data.centered = False
  config.model.scale_by_sigma = True
  config.model.ema_rate = 0.999
  return config
