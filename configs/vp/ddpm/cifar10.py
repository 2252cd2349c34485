"""DDPM on CIFAR-10 (Ho et al. 2020): VP SDE, discrete training, ancestral sampling.

``python main.py --config configs/vp/ddpm/cifar10.py --mode train`` (then ``--mode eval`` or
``--mode sample``).
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()

  training = config.training
  training.sde = "vpsde"
  training.continuous = False
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "ancestral_sampling"
  sampling.corrector = "none"

  data = config.data
  data.centered = True

  model = config.model
  model.name = "ddpm"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  return config
