"""The authors' noise-conditional classifier for CIFAR-10: a WRN-28-10 under the VE SDE of
``configs/ve/cifar10_ncsnpp_continuous.py``.

Train it (``python -m classifier_training --config ... --workdir ...`` is the same run)::

    python main.py --config configs/classifier/vesde_cifar10_wrn28_10.py --mode train_classifier \\
      --workdir runs/clf_cifar10

Four blocks per group, width 10, GroupNorm, the noise label ``sigma(t)`` embedded as ``log
sigma`` with random Fourier features (scale 16, 256 features): 38,913,242 parameters, the count
of the authors' own module. Data, scaling and SDE are the score model's, so the classifier sees
the same ``x(t)``. The training length and optimizer are this project's defaults, not the
authors' (their recipe is not part of their release).
"""

import ml_collections

from configs.classifier import classifier_of
from configs.ve import cifar10_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
  config = classifier_of(cifar10_ncsnpp_continuous.get_config(), blocks_per_group=4,
                         channel_multiplier=10, embedding_type="fourier", n_iters=200000,
                         snapshot_freq=10000)
  return config
