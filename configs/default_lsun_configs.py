"""LSUN / 256-px defaults (bedroom, church_outdoor; also the base of CelebA-HQ and FFHQ at 256)."""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_configs()
  config.training.batch_size = 64
  config.training.n_iters = 2400001
  config.training.snapshot_freq_for_preemption = 5000

  config.sampling.snr = 0.075

  config.eval.begin_ckpt = 50
  config.eval.end_ckpt = 96
  config.eval.batch_size = 512
  config.eval.enable_sampling = True

  config.data.dataset = "LSUN"
  config.data.source = "tfds"
  config.data.category = "bedroom"    # LSUN scene category (tfds: lsun/<category>)
  config.data.image_size = 256
  config.data.num_channels = 3
  config.data.random_flip = True
  config.data.centered = False
  config.data.uniform_dequantization = False

  config.model.sigma_min = 0.01
  config.model.sigma_max = 378.0
  config.model.num_scales = 2000
  config.model.beta_min = 0.1
  config.model.beta_max = 20.0
  config.model.dropout = 0.0
  config.model.embedding_type = "fourier"
  return config
