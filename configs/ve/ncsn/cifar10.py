"""NCSN (v1, Song & Ermon 2019) on CIFAR-10: 10 noise levels from 1 to 0.01, annealed Langevin.

``python main.py --config configs/ve/ncsn/cifar10.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

As in v1, the network conditions its normalizations on the noise-level index and outputs the score
itself (scale_by_sigma False); it has model.num_scales classes (models.ncsnv2.ncsn_from_config).
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = False

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "none"
  sampling.corrector = "ald"
  sampling.n_steps_each = 100
  sampling.snr = 0.316

  model = config.model
  model.name = "ncsn"
  model.scale_by_sigma = False
  model.sigma_max = 1.0
  model.num_scales = 10
  model.ema_rate = 0.0
  model.normalization = "InstanceNorm++"
  model.nonlinearity = "elu"
  model.nf = 128
  model.interpolation = "bilinear"

  optim = config.optim
  optim.weight_decay = 0.0
  optim.optimizer = "Adam"
  optim.lr = 0.001
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 0
  optim.grad_clip = -1.0
  return config
