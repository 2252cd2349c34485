"""2-D toy: gaussian mixture data, VP SDE, continuous DSM, toy MLP. Trains on a CPU in a minute.

``python main.py --config configs/toy/gaussian_mixture.py --mode train`` (then ``--mode eval`` or
``--mode sample``).
"""

from configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs("gaussian_mixture")
