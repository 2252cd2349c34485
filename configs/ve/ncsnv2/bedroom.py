"""NCSNv2 (Song & Ermon 2020) on LSUN bedroom at 128 px: 1086 noise levels from 190 to 0.01.

``python main.py --config configs/ve/ncsnv2/bedroom.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The network is not told the noise level; its output is divided by sigma (scale_by_sigma).
"""

import ml_collections

from configs.default_lsun_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()

  training = config.training
  training.batch_size = 128
  training.sde = "vesde"
  training.continuous = False

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 3
  sampling.snr = 0.095

  data = config.data
  data.category = "bedroom"
  data.image_size = 128

  model = config.model
  model.name = "ncsnv2_128"
  model.scale_by_sigma = True
  model.sigma_max = 190.0
  model.num_scales = 1086
  model.ema_rate = 0.9999
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  model.interpolation = "bilinear"

  optim = config.optim
  optim.weight_decay = 0.0
  optim.optimizer = "Adam"
  optim.lr = 0.0001
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
