"""2-D toy: the gaussian mixture's exact score (``model.name = 'exact_score'``) in place of the toy
MLP, so every sampler runs on the true score with no training (no checkpoint):

``python main.py --config configs/toy/gaussian_mixture_exact.py --mode sample`` (or
``--mode figures``).
"""

from configs.toy import gaussian_mixture


def get_config():
  config = gaussian_mixture.get_config()
  config.model.name = "exact_score"
  return config
