"""Noise-conditional classifier for MNIST under the VP SDE of ``configs/vpsde_mnist.py``.

``python -m classifier_training --config configs/classifier/vpsde_mnist_wrn.py --workdir W``.
The data, their scaling (``data.centered``) and the SDE (``training.sde`` and the SDE's fields of
``model``) are those of the score model it guides, so the classifier sees the same ``x(t)`` and
the same noise label (``999 t``, embedded sinusoidally). Network: a WRN-10-2 (one block per
group, width 2; 0.74 M parameters) on 28x28x1.
"""

import ml_collections

from configs import vpsde_mnist

_SDE_FIELDS = ("num_scales", "sigma_min", "sigma_max", "beta_min", "beta_max")


def get_config() -> ml_collections.ConfigDict:
  config = vpsde_mnist.get_config()
  model = ml_collections.ConfigDict({field: config.model[field] for field in _SDE_FIELDS})
  model.name = "wideresnet_noise_conditional"
  model.num_classes = 10
  model.blocks_per_group = 1
  model.channel_multiplier = 2
  model.embedding_type = "positional"
  model.embedding_dim = 128
  model.fourier_scale = 16.0
  model.ema_rate = 0.999
  config.model = model

  training = config.training
  training.batch_size = 128
  training.n_iters = 4000
  training.log_freq = 100
  training.snapshot_freq = 1000

  config.optim.lr = 1e-3
  config.optim.warmup = 200
  config.eval.batch_size = 1000
  config.eval.classifier_times = (0.01, 0.1, 0.3, 0.5, 0.7, 0.9)
  return config
