"""Song's score-SDE tutorial on MNIST: ``dx = sigma^t dw`` (sigma = 25), its ScoreNet, its training.

Reproduces the tutorial's setup (its blog Colab; FluxML's model-zoo ``diffusion_mnist`` ports it):
MNIST in [0, 1] (not centered, no flips), the SDE ``dx = 25^t dw`` on ``[0, 1]``
(``training.sde = 'sigmapowersde'``), the 1.1 M-parameter ScoreNet (``tutorial_scorenet``),
denoising score matching weighted by ``std(t)^2`` and summed over pixels, ``t ~ U[1e-5, 1]``,
Adam at 1e-4 without warmup, gradient clipping or EMA (``model.ema_rate = 0``: the evaluated
parameters are the trained ones), batch 32 for 50 epochs (``50 * 60000 / 32 = 93750`` steps).

Sampling ends at ``t = 1e-3`` as in the tutorial. The default is its predictor-corrector
sampler: 500 steps of Euler-Maruyama with one Langevin corrector step at snr 0.16 (here the
predictor runs before the corrector, see docs/sampling.md; the tutorial ran the corrector first),
finishing with a Tweedie denoising step where the tutorial omits the last step's noise. Its other
two samplers are overrides: Euler-Maruyama alone (``--config.sampling.corrector=none``) and the
probability-flow ODE with RK45 at ``rtol = atol = 1e-5``
(``--config.sampling.method=ode``, Dormand-Prince 5(4) as scipy's RK45).

``python main.py --config configs/tutorial_mnist.py --mode train`` (then ``--mode eval`` or
``--mode sample``); on 2 CPU cores a step takes about half a second (13 hours for the 93750).
"""

from configs.default_mnist_configs import get_default_configs


def get_config():
  config = get_default_configs()
  training = config.training
  training.sde = "sigmapowersde"
  training.continuous = True
  training.reduce_mean = False         # the tutorial sums the squared error over pixels
  training.likelihood_weighting = False  # weight std(t)^2: (score std + z)^2
  training.eps = 1e-5
  training.batch_size = 32
  training.n_iters = 50 * 60000 // 32  # 50 epochs
  training.n_jitted_steps = 5
  training.log_freq = 100
  training.eval_freq = 1000
  training.snapshot_freq = 9375        # 5 epochs
  training.snapshot_freq_for_preemption = 1000

  data = config.data
  data.centered = False                # [0, 1], as the tutorial's ToTensor
  data.uniform_dequantization = False

  model = config.model
  model.name = "tutorial_scorenet"
  model.sigma = 25.0
  model.num_scales = 500               # sampling steps of the EM and PC samplers
  model.channels = (32, 64, 128, 256)
  model.embed_dim = 256
  model.fourier_scale = 30.0
  model.fourier_seed = 0
  model.dropout = 0.0
  model.ema_rate = 0.0                 # no EMA in the tutorial

  optim = config.optim
  optim.optimizer = "Adam"
  optim.lr = 1e-4
  optim.beta1 = 0.9
  optim.eps = 1e-8
  optim.weight_decay = 0.0
  optim.warmup = 0
  optim.grad_clip = -1.0               # negative: no clipping

  sampling = config.sampling
  sampling.method = "pc"
  sampling.predictor = "euler_maruyama"
  sampling.corrector = "langevin"
  sampling.snr = 0.16
  sampling.n_steps_each = 1
  sampling.eps = 1e-3
  sampling.noise_removal = True
  sampling.ode_solver = "dopri5"
  sampling.ode_rtol = 1e-5
  sampling.ode_atol = 1e-5
  return config
