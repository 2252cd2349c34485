"""NCSN++ on CIFAR-10, VE SDE, continuous training (62.76 M parameters).

PC sampling: a reverse-diffusion predictor step and one Langevin corrector step (signal-to-noise
ratio 0.16) per noise level.

``python main.py --config configs/ve/cifar10_ncsnpp_continuous.py --mode train`` (then
``--mode eval`` or ``--mode sample``).
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"

  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "residual"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  model.conv_size = 3
  return config
