"""DDPM on LSUN bedroom at 256 px (Ho et al. 2020).

The VP SDE's discrete chain: the DDPM loss over 1000 levels, ancestral sampling.

``python main.py --config configs/vp/ddpm/bedroom.py --mode train`` (then ``--mode eval`` or
``--mode sample``).
"""

import ml_collections

from configs.default_lsun_configs import get_default_configs


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
  data.category = "bedroom"
  data.centered = True

  model = config.model
  model.name = "ddpm"
  model.scale_by_sigma = False
  model.num_scales = 1000
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 1, 2, 2, 4, 4)
  model.num_res_blocks = 2
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True

  optim = config.optim
  optim.lr = 2e-5
  return config
