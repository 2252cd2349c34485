"""MNIST, sub-VP SDE, continuous DSM, sampled with a predictor-corrector sampler.

``python main.py --config configs/subvpsde_pc_mnist.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

As subvpsde_mnist (network, data, optimizer, training), but sampling alternates a reverse-
diffusion predictor step with one Langevin corrector step at signal-to-noise ratio 0.16 (the
paper's PC sampler): twice the network evaluations of the Euler-Maruyama sampler per step.
"""

from configs.subvpsde_mnist import get_config as get_subvp_config


def get_config():
  config = get_subvp_config()
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.sampling.snr = 0.16
  config.sampling.n_steps_each = 1
  return config
