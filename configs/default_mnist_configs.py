"""MNIST defaults (28x28x1) with a DDPM++-style network sized for 28x28.

Network: NCSN++ class in its DDPM++ configuration (BigGAN residual blocks, skip rescaling,
no FIR/progressive paths), ``nf = 64``, ``ch_mult = (1, 2, 2)`` -- three resolutions 28, 14, 7,
since 28 = 7 * 2^2 cannot be halved a third time -- two residual blocks per resolution and
self-attention at 14x14 (the CIFAR-10 network attends at half resolution, 16x16). That is a
few million parameters: MNIST needs far less capacity than CIFAR-10's 61.8 M, and a step
stays cheap enough for a laptop-CPU smoke run (``--config.model.nf=32``).

Data: the official IDX files read with numpy (``data.source = 'idx'``); point
``--config.data.data_dir`` at the folder holding them. No random flips: digits are not symmetric.

The rest (the ``ncsnpp`` model class, dropout 0.1, batch 128, Adam at 2e-4, evaluation from
checkpoint 1 with sampling) comes from the shared defaults (default_configs).
"""

import ml_collections

from configs.default_configs import get_default_configs as get_base_configs


def get_default_configs() -> ml_collections.ConfigDict:
  config = get_base_configs()
  training = config.training
  training.n_iters = 60001
  training.log_freq = 100
  training.eval_freq = 500
  training.snapshot_freq = 5000
  training.snapshot_freq_for_preemption = 1000
  training.reduce_mean = True

  evaluate = config.eval
  evaluate.end_ckpt = 100
  evaluate.batch_size = 500
  evaluate.num_samples = 1000
  evaluate.enable_bpd = True
  evaluate.bpd_num_repeats = 1

  data = config.data
  data.dataset = "mnist"
  data.source = "idx"
  data.image_size = 28
  data.num_channels = 1
  data.random_flip = False

  model = config.model
  model.ema_rate = 0.999
  model.normalization = "GroupNorm"
  model.nonlinearity = "swish"
  model.nf = 64
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 2
  model.attn_resolutions = (14,)
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

  config.optim.warmup = 1000
  return config
