"""The exact score of the data as a model (``model.name = 'exact_score'``): no network and no
parameters, so every sampler and the likelihood run on the true score without training."""

from __future__ import annotations

import flax.linen as nn
import ml_collections

import exact_scores
import sde_lib
from models.utils import register_model


@register_model("exact_score")
class ExactScore(nn.Module):
  """The closed-form score of the toy ``dataset`` (:func:`exact_scores.toy_mixture`).

  It has no parameters and no network output: ``builders`` asks :meth:`score_fn` for the score
  instead of converting a network's output (``models.utils.get_score_fn``), initializes it with
  empty parameters ``{}`` and refuses to train it.
  """
  dataset: str

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "ExactScore":
    """Raises a one-line ``ValueError`` unless ``config.data`` is a toy with an exact score."""
    data = config.data
    if data.get("source") != "toy" or str(data.dataset).lower() not in exact_scores.MIXTURE_TOYS:
      raise ValueError(f"model.name = 'exact_score' needs data with a closed-form score, the "
                       f"toys {', '.join(exact_scores.MIXTURE_TOYS)} (data.source = 'toy'); got "
                       f"data.dataset = {data.dataset!r} from source {data.get('source')!r}.")
    return cls(dataset=str(data.dataset).lower())

  @nn.nowrap
  def score_fn(self, sde: sde_lib.SDE) -> sde_lib.ScoreFn:
    """``score_fn(x: [B, D], t: [B]) -> [B, D]``, the exact score of the data under ``sde``."""
    return exact_scores.gaussian_mixture_score(sde, *exact_scores.toy_mixture(self.dataset))
