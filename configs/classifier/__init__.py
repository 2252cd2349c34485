"""Noise-conditional classifiers that guide a score model, and :func:`classifier_of`.

Each config here is trained with ``--mode train_classifier``, e.g.
``python main.py --config configs/classifier/vpsde_mnist_wrn.py --mode train_classifier``
(``python -m classifier_training --config ...`` is the same run).
"""

import ml_collections

# The fields of ``config.model`` that define the SDE: the classifier must see the score model's.
SDE_FIELDS = ("num_scales", "sigma_min", "sigma_max", "beta_min", "beta_max")


def classifier_of(config: ml_collections.ConfigDict, *, blocks_per_group: int,
                  channel_multiplier: int, embedding_type: str, n_iters: int,
                  snapshot_freq: int) -> ml_collections.ConfigDict:
  """``config`` (a score model's, changed in place) made that of a WideResNet noise-conditional
  classifier for its model.

  Data, their scaling and the SDE stay the score model's (so the classifier sees the same
  ``x(t)`` and noise label); ``config.model`` becomes the classifier's.
  """
  model = ml_collections.ConfigDict({field: config.model[field] for field in SDE_FIELDS})
  model.name = "wideresnet_noise_conditional"
  model.num_classes = 10
  model.blocks_per_group = blocks_per_group
  model.channel_multiplier = channel_multiplier
  model.embedding_type = embedding_type
  model.embedding_dim = 128
  model.fourier_scale = 16.0
  model.ema_rate = 0.999
  config.model = model
  training = config.training
  training.batch_size = 128
  training.n_iters = n_iters
  training.log_freq = 100
  training.snapshot_freq = snapshot_freq
  config.eval.batch_size = 1000
  config.eval.classifier_times = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9)
  return config
