"""``registry.Registry``: the one name -> piece table behind every config choice."""

import pytest

import builders
import likelihood
import ode_solvers
import sampling
import sde_lib
from infra.registry import Registry
from models import layers
from models import utils as mutils


def test_register_and_look_up_case_insensitively():
  table = Registry("widget")

  @table.register("Big_One")
  class BigOne:
    pass

  table.add("small", 3)
  assert table.get("big_one") is BigOne and table.get("BIG_ONE") is BigOne
  assert table.get("Small") == 3
  assert "SMALL" in table and "medium" not in table
  assert table.names() == ("big_one", "small")
  assert list(table.items()) == [("big_one", BigOne), ("small", 3)]


def test_unknown_and_duplicate_names_are_one_line_errors():
  table = Registry("widget")
  table.add("b", 1)
  table.add("a", 2)
  with pytest.raises(ValueError, match=r"^Unknown widget 'c'; valid names are: a, b\.$"):
    table.get("c")
  with pytest.raises(ValueError, match="A widget named 'A' is already registered"):
    table.add("A", 3)


@pytest.mark.parametrize("table, names", [
    (sde_lib.SDES, ("subvpsde", "vesde", "vpsde")),
    (mutils.MODELS, ("ddpm", "ncsn", "ncsnpp", "ncsnv2", "toy_mlp",
                     "wideresnet_noise_conditional")),
    (sampling.PREDICTORS, ("ancestral_sampling", "euler_maruyama", "none", "reverse_diffusion")),
    (sampling.CORRECTORS, ("ald", "langevin", "none")),
    (ode_solvers.SOLVERS, ("bosh3", "dopri5", "dopri8", "euler", "heun", "tsit5")),
    (builders.SAMPLING_METHODS, ("ddim", "dpm_solver", "edm_heun", "ode", "pc")),
    (builders.OPTIMIZERS, ("adam", "adamw")),
    (likelihood.HUTCHINSON_TYPES, ("exact", "gaussian", "rademacher")),
    (layers.ACTIVATIONS, ("elu", "lrelu", "relu", "silu", "swish")),
])
def test_every_choice_is_a_registry(table, names):
  assert isinstance(table, Registry)
  assert set(names) <= set(table.names())
