"""CelebA defaults (64x64x3, the authors' center crop), as in the paper's CelebA experiments."""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_configs()
  config.training.batch_size = 128
  config.training.n_iters = 1300001
  config.training.snapshot_freq_for_preemption = 10000

  config.sampling.snr = 0.17

  config.eval.begin_ckpt = 1
  config.eval.end_ckpt = 26
  config.eval.batch_size = 1024
  config.eval.enable_sampling = True

  config.data.dataset = "CELEBA"
  config.data.source = "tfds"
  config.data.image_size = 64
  config.data.num_channels = 3
  config.data.random_flip = True
  config.data.centered = False
  config.data.uniform_dequantization = False

  config.model.sigma_min = 0.01
  config.model.sigma_max = 90.0
  config.model.num_scales = 1000
  config.model.beta_min = 0.1
  config.model.beta_max = 20.0
  config.model.dropout = 0.1
  config.model.embedding_type = "fourier"
  return config
