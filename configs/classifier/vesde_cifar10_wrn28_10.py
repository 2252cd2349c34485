"""The authors' noise-conditional classifier for CIFAR-10: a WRN-28-10 under the VE SDE of
``configs/ve/cifar10_ncsnpp_continuous.py``.

Four blocks per group, width 10, GroupNorm, the noise label ``sigma(t)`` embedded as ``log
sigma`` with random Fourier features (scale 16, 256 features): 38,913,242 parameters, the count
of the authors' own module. Data, scaling and SDE are the score model's, so the classifier sees
the same ``x(t)``. The training length and optimizer are this project's defaults, not the
authors' (their recipe is not part of their release).
"""

import ml_collections

from configs.ve import cifar10_ncsnpp_continuous

_SDE_FIELDS = ("num_scales", "sigma_min", "sigma_max", "beta_min", "beta_max")


def get_config() -> ml_collections.ConfigDict:
  config = cifar10_ncsnpp_continuous.get_config()
  model = ml_collections.ConfigDict({field: config.model[field] for field in _SDE_FIELDS})
  model.name = "wideresnet_noise_conditional"
  model.num_classes = 10
  model.blocks_per_group = 4
  model.channel_multiplier = 10
  model.embedding_type = "fourier"
  model.embedding_dim = 128
  model.fourier_scale = 16.0
  model.ema_rate = 0.999
  config.model = model

  training = config.training
  training.batch_size = 128
  training.n_iters = 200000
  training.log_freq = 100
  training.snapshot_freq = 10000

  config.eval.batch_size = 1000
  config.eval.classifier_times = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9)
  return config
