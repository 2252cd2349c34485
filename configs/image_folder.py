"""Your own images: a folder of PNG / JPEG files, VP SDE, continuous training, a small DDPM++.

Point it at the folder on the command line (the config leaves ``data.data_dir`` empty)::

    python main.py --config configs/image_folder.py --workdir runs/mine --mode train \\
      --config.data.data_dir=/path/to/images

Data (``data.source = 'folder'``, ``readers.load_image_folder``): every ``.png``, ``.jpg`` and
``.jpeg`` file below the folder, decoded as RGB (``--config.data.num_channels=1``: grayscale),
cropped to its central square and resized to 32 x 32 (``data.image_size``). Subfolders
``train/`` and ``test/`` (or ``val/``, ``validation/``) are used as the splits when present;
otherwise ``data.holdout_fraction`` (5 %, at least one image) is held out as the test split,
chosen from the file names, so it stays the same from run to run. Class subfolders give labels
(unused by this unconditional model). Random flips (use ``--config.data.random_flip=False`` for
images that are not left-right symmetric, such as text), data in [-1, 1].

Network: NCSN++ in its DDPM++ configuration (as ``vp/cifar10_ddpmpp_continuous``) at half the
width and half the depth -- ``nf = 64``, two residual blocks per resolution 32, 16, 8, 4,
attention at 16 x 16 -- 9.86 M parameters against CIFAR-10's 61.8 M, and 3.3 against 20.3 GFLOP
per image forward: a few thousand images need less capacity. With few images the EMA is
shorter (0.999) and snapshots come every 10 000 steps; watch the samples
(``samples/iter_<step>``) for memorized training images and stop early.

Tips:

* Suggested noise settings from your data: ``python -m noise_schedule --config
  configs/image_folder.py --config.data.data_dir=/path/to/images`` prints ready-to-paste
  overrides (VP ``model.beta_max``; for VE ``model.sigma_max`` = the largest distance between two
  training images, ``model.num_scales`` and ``sampling.snr``).
* VE SDE instead: ``--config.training.sde=vesde --config.model.scale_by_sigma=True
  --config.model.embedding_type=fourier --config.sampling.predictor=reverse_diffusion
  --config.sampling.corrector=langevin --config.sampling.eps=1e-5``, with ``sigma_max`` set from
  the data by ``noise_schedule`` run with the same ``data`` overrides (``data.centered`` doubles
  the distances): the default 50 suits CIFAR-10 in [0, 1], not necessarily your images.
* Evaluation: ``--mode eval`` scores the snapshots ``eval.begin_ckpt..end_ckpt`` on the test
  split (loss, bits/dim with ``--config.eval.enable_bpd=True``) and draws ``eval.num_samples``.
"""

import ml_collections

from configs.vp.cifar10_ddpmpp_continuous import get_config as get_ddpmpp_config


def get_config() -> ml_collections.ConfigDict:
  config = get_ddpmpp_config()  # the VP SDE, continuous DSM, Euler-Maruyama, DDPM++ network

  training = config.training
  training.n_iters = 100001
  training.snapshot_freq = 10000
  training.snapshot_freq_for_preemption = 2000
  training.eval_freq = 500
  training.log_freq = 100

  evaluate = config.eval
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 10
  evaluate.batch_size = 256
  evaluate.enable_sampling = True
  evaluate.num_samples = 1000
  evaluate.bpd_num_repeats = 1

  data = config.data
  data.source = "folder"
  data.dataset = "images"
  data.data_dir = ""
  data.image_size = 32
  data.num_channels = 3
  data.holdout_fraction = 0.05
  data.random_flip = True
  data.uniform_dequantization = False

  model = config.model
  model.ema_rate = 0.999
  model.dropout = 0.1
  model.nf = 64
  model.num_res_blocks = 2

  config.optim.warmup = 1000
  return config
