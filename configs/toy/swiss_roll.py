"""2-D toy: swiss roll data, VP SDE, continuous DSM, toy MLP. Trains on a CPU in a minute.

``python main.py --config configs/toy/swiss_roll.py --mode train`` (then ``--mode eval`` or
``--mode sample``).
"""

from configs.default_toy_configs import get_default_configs


def get_config():
  return get_default_configs("swiss_roll")
