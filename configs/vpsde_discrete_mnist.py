"""MNIST, DDPM (Ho et al. 2020): the VP SDE's discrete chain, DDPM loss, ancestral sampling.

``python main.py --config configs/vpsde_discrete_mnist.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

The network, data and optimizer are those of the continuous VP twin (vpsde_mnist); training
uses the discrete objective over ``model.num_scales = 1000`` noise levels (the network is
conditioned on the level index) and sampling walks the same 1000 levels with the ancestral
(DDPM) predictor, no corrector.
"""

from configs.vpsde_mnist import get_config as get_vp_config


def get_config():
  config = get_vp_config()
  config.training.continuous = False
  config.model.num_scales = 1000
  config.sampling.predictor = "ancestral_sampling"
  config.sampling.corrector = "none"
  return config
