"""DDPM++ on CIFAR-10, VP SDE, continuous training (61.80 M parameters).

Sampling: the Euler-Maruyama predictor, no corrector.

``python main.py --config configs/vp/cifar10_ddpmpp_continuous.py --mode train`` (then
``--mode eval`` or ``--mode sample``).
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()

  training = config.training
  training.sde = "vpsde"
  training.continuous = True
  training.reduce_mean = True

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "none"

  data = config.data
  data.centered = True

  model = config.model
  model.name = "ncsnpp"
  model.scale_by_sigma = False
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 128
  model.ch_mult = (1, 2, 2, 2)
  model.num_res_blocks = 4
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = False
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "none"
  model.progressive_input = "none"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "positional"
  model.fourier_scale = 16.0
  model.conv_size = 3
  return config
