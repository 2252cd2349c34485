"""MNIST, VE SDE, continuous DSM, NCSN++-style conditioning on sigma (see default_mnist_configs).

``python main.py --config configs/vesde_mnist.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

sigma_max = 20 follows the paper's rule of thumb (about the largest distance between two
training images: MNIST in [0, 1]^784 has pairwise distances up to about 17).
"""

from configs.default_mnist_configs import get_default_configs


def get_config():
  config = get_default_configs()
  config.training.sde = "vesde"
  config.training.continuous = True
  config.data.centered = False
  config.model.sigma_min = 0.01
  config.model.sigma_max = 20.0
  config.model.scale_by_sigma = True
  config.model.embedding_type = "fourier"
  config.sampling.predictor = "reverse_diffusion"
  config.sampling.corrector = "langevin"
  config.sampling.snr = 0.16
  config.sampling.eps = 1e-5
  return config
