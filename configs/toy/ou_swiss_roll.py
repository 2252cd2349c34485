"""2-D toy as in KAIST's Ornstein-Uhlenbeck tutorial: swiss roll, OU SDE, small MLP, CPU minutes.

The forward process is ``dx = -x / 2 dt + dw`` (``training.sde = 'ousde'``, ``mu = 1/2``,
``sigma = 1``), whose stationary law is ``N(0, I)``; its horizon is ``T = 10``, where
``a(T) = e^(-5) = 0.0067`` and the variance is ``1 - e^(-10)``, so the prior ``N(0, (1 -
e^(-10)) I)`` is close to the true ``p_T`` (at ``T = 1`` the variance would be only 0.63). The
network (the toy MLP of the other toys) predicts the noise and is conditioned on ``t / T``,
which ``model.embedding_scale = 999`` spreads over DDPM's time scale as for VP. Continuous DSM,
Euler-Maruyama sampling over 500 steps down to ``t = 1e-3``.

``python main.py --config configs/toy/ou_swiss_roll.py --mode train`` (then ``--mode eval`` or
``--mode sample``).
"""

from configs.default_toy_configs import get_default_configs


def get_config():
  config = get_default_configs("swiss_roll")
  config.training.sde = "ousde"
  model = config.model
  model.mu = 0.5
  model.sigma = 1.0
  model.T = 10.0
  model.embedding_scale = 999.0
  return config
