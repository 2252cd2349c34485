"""NCSNv2 (Song & Ermon 2020) on CIFAR-10: 232 noise levels from 50 to 0.01.

``python main.py --config configs/ve/ncsnv2/cifar10.py --mode train`` (then ``--mode eval`` or
``--mode sample``).

NCSN with all five of NCSNv2's techniques: the twin (ve/ncsn/cifar10_1245) already has
techniques 1, 2, 4 and 5; this adds technique 3 -- the network is not told the noise level and
its output is divided by sigma (scale_by_sigma) -- with the NCSNv2 network (ncsnv2_64, the
authors' depth below 96 px) and a learning rate of 1e-4 instead of 1e-3.
"""

import ml_collections

from configs.ve.ncsn.cifar10_1245 import get_config as get_ncsn_config


def get_config() -> ml_collections.ConfigDict:
  config = get_ncsn_config()
  config.model.name = "ncsnv2_64"
  config.model.scale_by_sigma = True
  config.optim.lr = 0.0001
  return config
