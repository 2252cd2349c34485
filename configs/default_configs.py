"""Defaults shared by every config, mirroring the authors' structure.

Sections: ``training``, ``sampling``, ``eval``, ``data``, ``model``, ``optim`` and ``seed``.
Configs are plain data: the modes and ``builders`` read them and pass explicit arguments to the
math; ``builders``' docstring says where each field takes effect.
"""

import ml_collections


def get_default_configs() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  config.training = training = ml_collections.ConfigDict()
  training.sde = "vpsde"              # vesde | vpsde | subvpsde | rectified_flow | ...
  training.continuous = True          # continuous-time DSM; False: SMLD / DDPM discrete losses
  training.reduce_mean = False        # mean (True) or sum (False) over non-batch dimensions
  training.likelihood_weighting = False
  training.objective = "dsm"          # dsm: score matching | regression: |out - target|^2 of
                                      # model.prediction (flow matching for velocity)
  training.time_sampling = "uniform"  # uniform | logit_normal | importance (likelihood
                                      # weighting: t ~ g^2 / std^2), on [eps, T]
  training.logit_normal_mean = 0.0    # t = eps + (T - eps) sigmoid(mean + std n)
  training.logit_normal_std = 1.0
  training.eps = 1e-5                 # smallest training time (continuous losses)
  training.batch_size = 128           # global batch, over all devices and processes
  training.n_iters = 1300001
  training.n_jitted_steps = 5         # train steps per compiled call (lax.scan)
  training.log_freq = 50
  training.eval_freq = 100
  training.snapshot_freq = 50000      # kept checkpoints (the authors' snapshots)
  training.snapshot_freq_for_preemption = 10000  # the overwritten preemption checkpoint
  training.snapshot_sampling = True   # sample a PNG grid at each snapshot
  training.mixed_precision = False    # bf16 activations/matmuls; fp32 params, optimizer, EMA, loss
  training.remat = False              # NCSN++/DDPM++: recompute blocks in backward (less memory)
  training.label_dropout = 0.1        # class-conditional models: P(label -> null label), for CFG

  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.method = "pc"              # pc | ode | ddim | dpm_solver | unipc | ipndm | edm_heun
  sampling.predictor = "reverse_diffusion"
  sampling.corrector = "langevin"
  sampling.n_steps_each = 1           # corrector steps per predictor step
  sampling.noise_removal = True       # final denoising step (Tweedie) at t = eps
  sampling.probability_flow = False
  sampling.snr = 0.16
  sampling.eps = 1e-3                 # sampling ends at t = eps
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  sampling.ode_solver = "tsit5"
  # Fast samplers (fast_samplers/): sampling.method = ddim | dpm_solver | unipc | ipndm | edm_heun;
  # for few steps use unipc (order 2, bh1, logsnr: docs/fast_samplers.md ranks them).
  sampling.steps = 20                 # their steps (NFE: ddim/dpm multistep/unipc/ipndm 1, heun 2)
  # uniform_t | quadratic_t | logsnr | karras, or times "1,0.3,...,0.001" (they set steps, eps);
  # "": the method's own.
  sampling.schedule = ""
  sampling.rho = 7.0                  # exponent of the karras schedule
  sampling.eta = 0.0                  # ddim: 0 deterministic .. 1 ancestral
  sampling.order = 2                  # dpm_solver, unipc (p; p + 1 corrected): 1-3; ipndm: 1-4
  sampling.unipc_variant = "bh1"      # unipc: B(h) = -h (bh1) or e^-h - 1 (bh2, for guidance)
  sampling.unipc_corrector = True     # unipc: UniC after each step but the last (no extra NFE)
  sampling.unipc_predictor = "unip"   # unipc: UniP-p, or dpm_solver++ (its pM steps, then UniC)
  sampling.multistep = True           # dpm_solver: 2M/3M (1 NFE per step) or 2S/3S (order NFE)
  sampling.s_churn = 0.0              # edm_heun: EDM's S_churn (0: deterministic Heun)
  sampling.s_min = 0.0                # edm_heun: churn only where s_min <= sigma <= s_max
  sampling.s_max = float("inf")       # edm_heun: upper end of the churned noise levels
  sampling.s_noise = 1.0              # edm_heun: EDM's S_noise (scale of the churn noise)

  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.begin_ckpt = 1
  evaluate.end_ckpt = 26
  evaluate.batch_size = 1024
  evaluate.enable_sampling = True
  evaluate.num_samples = 50000
  evaluate.enable_loss = True
  evaluate.enable_bpd = False
  evaluate.bpd_dataset = "test"
  evaluate.bpd_num_repeats = 5
  evaluate.bpd_num_examples = 0       # > 0: only the first that many examples (fixed order)
  evaluate.rtol = 1e-5
  evaluate.atol = 1e-5
  evaluate.hutchinson_type = "rademacher"  # rademacher | gaussian | exact
  # The likelihood ODE's adaptive solver (ode_solvers.py). dopri5 (the authors' RK45) takes
  # 35-55 % fewer evaluations on trained and untrained networks, but on exact scores its answer
  # at the same tolerances is up to 4x further from the truth (docs/likelihood.md#the-solver).
  evaluate.ode_solver = "tsit5"
  # Images: how bits/dim treats their discrete levels (dequantization.py): uniform | variational
  # (the --mode train_dequantizer flow in <workdir>/dequantizer) | none (the density at the grid
  # points; bounds nothing). Vector data are continuous: none.
  evaluate.dequantization = "uniform"
  evaluate.enable_bound = False       # the SDE's likelihood bound (likelihood.get_bound_fn) beside
                                      # the ODE's bits/dim, on the same examples
  evaluate.bound_num_draws = 1000     # Monte Carlo draws per example (2 network passes each)
  evaluate.bound_time_sampling = "importance"  # importance (t ~ g^2 / std^2) | uniform
  # Sample quality (evaluation.scorers.build_sample_scorer): auto = the MNIST classifier for MNIST,
  # FID / IS / KID for other images, nothing for vectors; or inception | mnist_classifier | none.
  evaluate.sample_metrics = "auto"
  evaluate.inception_weights = ""     # pytorch-fid's .pth or .npz; or $SCORE_SDE_INCEPTION_WEIGHTS
  evaluate.fid_stats = ""             # reference statistics; "": the cache's (--mode fid_stats)
  evaluate.mnist_classifier = ""      # "": the cache's (python -m mnist_classifier)
  evaluate.inception_batch_size = 100  # images per Inception call (299 x 299 activations)
  evaluate.is_splits = 10
  evaluate.kid_subsets = 100
  evaluate.kid_subset_size = 1000

  # --mode reflow: a trained flow's (x0, x(T)) pairs, and straightness measured on Euler paths.
  config.reflow = reflow = ml_collections.ConfigDict()
  reflow.num_pairs = 10000            # pairs drawn with config.sampling (final denoising off)
  reflow.straightness_samples = 512   # trajectories the straightness is averaged over
  reflow.straightness_steps = 100     # Euler steps of each trajectory

  # --mode train_dequantizer: the variational dequantizer q(u | x) of a trained score model
  # (models/dequantizer.py), trained on the likelihood bound with the score model fixed.
  config.dequantizer = dequantizer = ml_collections.ConfigDict()
  dequantizer.hidden = 32             # channels of its convolutions
  dequantizer.num_couplings = 4       # affine coupling layers
  dequantizer.n_iters = 2000
  dequantizer.batch_size = 64
  dequantizer.lr = 1e-3
  dequantizer.warmup = 100
  dequantizer.ema_rate = 0.99

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "CIFAR10"
  data.source = "tfds"                # tfds | idx | cifar_python | npz | folder | tfrecords | toy
  data.data_dir = ""                  # local files for idx / cifar_python / npz; TFDS data_dir
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  data.centered = False               # [-1, 1] if True, else [0, 1]
  data.uniform_dequantization = False  # training batches (v + u) / 2^num_bits, u ~ U[0, 1)
  data.num_bits = 8                   # images reduced to 2^num_bits levels (Glow's 5-bit CelebA-HQ)
  data.dim = 0                        # > 0: vector data [B, dim] (toys) instead of images

  config.model = model = ml_collections.ConfigDict()
  model.name = "ncsnpp"
  model.sigma_min = 0.01
  model.sigma_max = 50.0
  model.num_scales = 1000
  model.beta_min = 0.1
  model.beta_max = 20.0
  model.dropout = 0.1
  model.embedding_type = "fourier"
  model.scale_by_sigma = False
  model.prediction = ""               # '': the SDE's own (noise, score or velocity); or noise |
                                      # score | data | velocity | v (models/predictions.py)
  model.ema_rate = 0.9999
  model.num_classes = 0               # > 0: class-conditional network (ncsnpp, toy_mlp), for CFG

  config.optim = optim = ml_collections.ConfigDict()
  optim.weight_decay = 0.0
  optim.optimizer = "Adam"
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.warmup = 5000
  optim.grad_clip = 1.0

  config.seed = 42
  return config


def rectified_flow(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` made a rectified flow: the linear path ``x(t) = (1 - t) x0 + t z`` up to the
  horizon ``T = 0.99`` (``sde_lib.RectifiedFlow``), a network predicting the velocity ``z - x0``
  trained by flow matching (plain regression), times uniform on ``[eps, T]``, and sampling by
  integrating the flow (the adaptive probability-flow ODE). The network, data and optimizer stay
  those of ``config``, so it trains on the same budget as the SDE it replaces."""
  config.training.sde = "rectified_flow"
  config.training.objective = "regression"
  config.model.prediction = "velocity"
  config.model.T = 0.99
  config.sampling.method = "ode"
  return config


def maximum_likelihood(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` trained for likelihood, as Song, Durkan, Murray & Ermon (ScoreFlow, 2021) trained
  their ``_deep`` models: the score-matching loss weighted by ``g^2`` (an upper bound on the
  negative log-likelihood), with times drawn from ``q ~ g^2 / std^2`` (its variance near
  ``t = 0`` removed), on uniformly dequantized training images (the density the bits/dim is
  computed of); evaluation reports the ODE's bits/dim and the bound, sampling with the ODE. The
  network, data, SDE and optimizer stay ``config``'s."""
  config.training.likelihood_weighting = True
  config.training.time_sampling = "importance"
  config.training.reduce_mean = True
  config.data.uniform_dequantization = True
  config.sampling.method = "ode"
  config.eval.enable_bpd = True
  config.eval.enable_bound = True
  return config
