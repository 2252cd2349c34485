"""NCSN++ on CelebA-HQ 1024x1024, VE SDE, continuous training.

PC sampling: a reverse-diffusion predictor step and one Langevin corrector step (signal-to-noise
ratio 0.15) per noise level, 2000 levels up to sigma_max 1348. The data come from a TFRecord file of
1024-px images (data.tfrecords_path).

``python main.py --config configs/ve/celebahq_ncsnpp_continuous.py --mode train`` with
``--config.data.tfrecords_path=FILE`` (then ``--mode eval`` or ``--mode sample``).
"""

import ml_collections

from configs.default_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
  config = get_default_configs()

  training = config.training
  training.sde = "vesde"
  training.continuous = True
  training.reduce_mean = False
  training.batch_size = 8
  training.n_iters = 2400001
  training.snapshot_freq_for_preemption = 5000

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.snr = 0.15

  evaluate = config.eval
  evaluate.batch_size = 1024
  evaluate.num_samples = 50000
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 96

  data = config.data
  data.dataset = "CelebAHQ"
  data.source = "tfrecords"
  data.tfrecords_path = ""  # a TFRecord file of 1024-px images
  data.image_size = 1024
  data.num_channels = 3
  data.centered = False
  data.random_flip = True

  model = config.model
  model.sigma_min = 0.01
  model.sigma_max = 1348.0
  model.num_scales = 2000
  model.dropout = 0.0
  model.name = "ncsnpp"
  model.scale_by_sigma = True
  model.ema_rate = 0.9999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 16
  model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
  model.num_res_blocks = 1
  model.attn_resolutions = (16,)
  model.resamp_with_conv = True
  model.conditional = True
  model.fir = True
  model.fir_kernel = (1, 3, 3, 1)
  model.skip_rescale = True
  model.resblock_type = "biggan"
  model.progressive = "output_skip"
  model.progressive_input = "input_skip"
  model.progressive_combine = "sum"
  model.attention_type = "ddpm"
  model.init_scale = 0.0
  model.embedding_type = "fourier"
  model.fourier_scale = 16.0
  model.conv_size = 3
  return config
