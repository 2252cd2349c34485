"""Tests for ``noise_schedule``: the largest pairwise distance against brute force, Technique 2's
equation and the authors' numbers, Technique 4's variance ratio against its recursion and a
simulation, the snr and beta_max criteria against the project's corrector and SDEs, and the
command end to end on a small image folder."""

import itertools
import math
import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import stats

import noise_schedule as ns
import sampling
import sde_lib
from datasets import readers
from noise_schedule import __main__ as noise_schedule_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/image_folder.py"

# The authors' NCSNv2 settings (their configs/*.yml, sigma_L = 0.01 throughout): sigma_1, L, D, and
# the Langevin steps per level T with the step epsilon.
PAPER = {"cifar10": (50.0, 232, 32 * 32 * 3, 5, 6.2e-6),
         "celeba": (90.0, 500, 64 * 64 * 3, 5, 3.3e-6),
         "bedroom": (190.0, 1086, 128 * 128 * 3, 3, 1.8e-6),
         "ffhq": (348.0, 2311, 256 * 256 * 3, 3, 9e-7)}


def brute_force_max_distance(x):
  x = np.asarray(x, np.float64)
  return max(np.linalg.norm(a - b) for a, b in itertools.combinations(x, 2))


# ------------------------------------------------------------------------------------------------
# Technique 1.


@pytest.mark.parametrize("n", [2, 7, 8, 9, 16, 37])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_max_pairwise_distance_is_the_brute_force_one(n, dtype):
  """Exact over tiles of 8 rows, whether or not N is a multiple of the tile."""
  rng = np.random.default_rng(n)
  x = (rng.normal(size=(n, 5)) * 3).astype(dtype) if dtype == np.float32 else rng.integers(
      0, 256, (n, 13), dtype=np.uint8)
  expected = brute_force_max_distance(x)
  assert ns.max_pairwise_distance(x, block=8) == pytest.approx(expected, rel=1e-12)
  assert ns.max_pairwise_distance(x) == pytest.approx(expected, rel=1e-12)
  # The farthest pair in the last, partial tile.
  far = np.array(x, np.float64)
  far[-1] = 1e3
  assert ns.max_pairwise_distance(far, block=8) == pytest.approx(brute_force_max_distance(far),
                                                                 rel=1e-12)


def test_max_pairwise_distance_needs_two_rows():
  with pytest.raises(ValueError, match="N >= 2"):
    ns.max_pairwise_distance(np.zeros((1, 3)))


# ------------------------------------------------------------------------------------------------
# Technique 2.


@pytest.mark.parametrize("dim", [5, 6, 10, 100, 784, 3072, 12288, 196608])
def test_ratio_solves_the_overlap_equation(dim):
  gamma = ns.geometric_ratio(dim)
  s = math.sqrt(2 * dim)
  phi = stats.norm.cdf
  overlap = phi(s * (gamma - 1) + 3 * gamma) - phi(s * (gamma - 1) - 3 * gamma)
  assert gamma > 1 and overlap == pytest.approx(0.5, abs=1e-9)
  assert ns.level_overlap(gamma, dim) == pytest.approx(overlap, abs=1e-12)
  # Closer levels overlap more, farther ones less.
  assert ns.level_overlap(1 + 0.99 * (gamma - 1), dim) > 0.5 > ns.level_overlap(
      1 + 1.01 * (gamma - 1), dim)


def test_levels_are_the_fewest_and_grow_with_dimension_and_range():
  for dim in (10, 3072, 196608):
    levels = ns.num_noise_levels(0.01, 50.0, dim)
    gamma = ns.geometric_ratio(dim)
    assert ns.ladder_ratio(0.01, 50.0, levels) <= gamma < ns.ladder_ratio(0.01, 50.0, levels - 1)
  by_dim = [ns.num_noise_levels(0.01, 50.0, d) for d in (5, 10, 100, 784, 3072, 12288, 196608)]
  assert by_dim == sorted(by_dim) and len(set(by_dim)) == len(by_dim)
  by_range = [ns.num_noise_levels(0.01, s, 3072) for s in (1.0, 10.0, 50.0, 348.0)]
  assert by_range == sorted(by_range) and len(set(by_range)) == len(by_range)


def test_technique_2_on_the_papers_data_sets():
  """The formula gives gamma = 1.0398, L = 220 on CIFAR-10; each of the authors' L is a little
  larger, with the same overlap 0.566-0.567 for all of them."""
  assert ns.geometric_ratio(3072) == pytest.approx(1.0398, abs=1e-4)
  assert ns.num_noise_levels(0.01, 50.0, 3072) == 220
  for sigma_max, levels, dim, _, _ in PAPER.values():
    assert ns.num_noise_levels(0.01, sigma_max, dim) < levels
    assert 0.566 < ns.level_overlap(ns.ladder_ratio(0.01, sigma_max, levels), dim) < 0.567


@pytest.mark.parametrize("args, match", [
    ((0.01, 50.0, 4), "D >= 5"),
    ((0.01, 0.01, 3072), "0 < sigma_min < sigma_max"),
    ((0.0, 50.0, 3072), "0 < sigma_min < sigma_max"),
])
def test_technique_2_refuses_what_it_cannot_do(args, match):
  with pytest.raises(ValueError, match=match):
    ns.num_noise_levels(*args)


# ------------------------------------------------------------------------------------------------
# Technique 4.


@pytest.mark.parametrize("epsilon, gamma, steps", [(6.2e-6, 1.0376, 5), (3e-5, 1.2, 1),
                                                   (1e-7, 1.01, 100), (9e-5, 3.0, 3)])
def test_variance_ratio_is_the_papers_expression_and_its_recursion(epsilon, gamma, steps):
  sigma_l, sigma_i = 0.01, 7.0  # any level: the ratio does not depend on it
  u = epsilon / sigma_l**2
  fixed = 2 * epsilon / (sigma_l**2 - sigma_l**2 * (1 - u)**2)
  paper = (1 - u)**(2 * steps) * (gamma**2 - fixed) + fixed
  step = epsilon * sigma_i**2 / sigma_l**2
  variance = (gamma * sigma_i)**2
  for _ in range(steps):  # x <- x + step (-x / sigma_i^2) + sqrt(2 step) z
    variance = (1 - step / sigma_i**2)**2 * variance + 2 * step
  got = ns.variance_ratio(epsilon, sigma_l, gamma, steps)
  assert got == pytest.approx(paper, rel=1e-12)
  assert got == pytest.approx(variance / sigma_i**2, rel=1e-10)


def test_variance_ratio_matches_a_langevin_simulation():
  """Langevin steps with the exact score of N(0, sigma_i^2 I), started from the previous level."""
  rng = np.random.default_rng(0)
  sigma_l, sigma_i, gamma, steps, epsilon = 0.01, 2.0, 1.5, 4, 2e-5
  step = epsilon * sigma_i**2 / sigma_l**2
  x = rng.normal(size=400_000) * gamma * sigma_i
  for _ in range(steps):
    x = x - step * x / sigma_i**2 + math.sqrt(2 * step) * rng.normal(size=x.shape)
  ratio = np.var(x) / sigma_i**2
  stderr = ratio * math.sqrt(2 / x.size)
  assert abs(ratio - ns.variance_ratio(epsilon, sigma_l, gamma, steps)) < 5 * stderr


def test_technique_4_reproduces_the_authors_steps():
  """Minimizing the ratio gives the authors' epsilon within 2 %, and their choice is within
  1e-6 of the minimal ratio."""
  for name, (sigma_max, levels, _, steps, paper_epsilon) in PAPER.items():
    gamma = ns.ladder_ratio(0.01, sigma_max, levels)
    epsilon = ns.langevin_epsilon(0.01, gamma, steps)
    assert epsilon == pytest.approx(paper_epsilon, rel=0.02), name
    best = ns.variance_ratio(epsilon, 0.01, gamma, steps)
    assert 1.0 < best <= ns.variance_ratio(paper_epsilon, 0.01, gamma, steps) < best + 1e-6
    for factor in (0.5, 0.9, 1.1, 2.0):
      assert ns.variance_ratio(factor * epsilon, 0.01, gamma, steps) > best


def test_snr_gives_the_ald_corrector_technique_4s_step():
  """The project's 'ald' corrector with the suggested snr steps epsilon sigma^2 / sigma_L^2."""
  sigma_l, epsilon = 0.01, 6.2e-6
  snr = ns.snr_for_epsilon(epsilon, sigma_l)
  assert snr == pytest.approx(math.sqrt(epsilon / sigma_l**2 / 2))
  sde = sde_lib.VESDE(sigma_min=sigma_l, sigma_max=50.0, N=232)
  corrector = sampling.CORRECTORS.get("ald")(sde, None, snr, 5)
  t = jnp.array([0.0, 0.3, 1.0])
  step = corrector.step_size(None, None, t) * sde.langevin_alpha(t)
  np.testing.assert_allclose(step, epsilon * sde.sigma(t)**2 / sigma_l**2, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# VP and sub-VP.


@pytest.mark.parametrize("distance", [0.5, 10.0, 100.0, 443.4])
def test_beta_max_makes_the_largest_separation_one_marginal_std(distance):
  for sde_class, beta_max in ((sde_lib.VPSDE, ns.vp_beta_max(distance, 0.1)),
                              (sde_lib.subVPSDE, ns.subvp_beta_max(distance, 0.1))):
    sde = sde_class(beta_min=0.1, beta_max=beta_max, N=1000)
    mean, std = sde.marginal_prob(jnp.full((1, 1), distance), jnp.ones((1,)))
    np.testing.assert_allclose(float(mean[0, 0]), float(std[0]), rtol=1e-4)
  # CIFAR-10 in [-1, 1] (largest distance about 100): about 18.3, next to the authors' 20.
  assert ns.vp_beta_max(100.0, 0.1) == pytest.approx(18.32, abs=0.01)
  assert ns.subvp_beta_max(100.0, 0.1) == pytest.approx(18.32, abs=0.01)


def test_beta_max_is_at_least_beta_min():
  assert ns.vp_beta_max(0.1, 0.1) == 0.1 and ns.subvp_beta_max(0.1, 0.1) == 0.1


# ------------------------------------------------------------------------------------------------
# The command.


def write_folder(root, n=12, size=8):
  rng = np.random.default_rng(5)
  os.makedirs(root, exist_ok=True)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        os.path.join(root, f"{i:02d}.png"))


def run_command(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "noise_schedule", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)


def test_command_prints_overrides_from_a_folder(tmp_path):
  write_folder(str(tmp_path))
  result = run_command("--config", CONFIG, f"--config.data.data_dir={tmp_path}",
                       "--config.data.image_size=8", "--config.sampling.n_steps_each=5")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  train = readers.load_image_folder(str(tmp_path), "train", 8, 3).images
  expected = brute_force_max_distance(train.reshape(len(train), -1) * (2 / 255))  # centered
  sigma_max = float(re.search(r"--config\.model\.sigma_max=(\S+)", out).group(1))
  assert sigma_max == pytest.approx(expected, rel=1e-4)
  levels = int(re.search(r"--config\.model\.num_scales=(\d+)", out).group(1))
  assert levels == ns.num_noise_levels(0.01, expected, 8 * 8 * 3)
  assert re.search(r"--config\.sampling\.snr=[0-9.]+", out)
  assert len(re.findall(r"--config\.model\.beta_max=[0-9.]+", out)) == 2  # VP and sub-VP
  assert f"{len(train)} of {len(train)} examples" in out and "5 step(s) per level" in out
  for reason in ("model.sigma_max: Technique 1", "model.num_scales: Technique 2",
                 "sampling.snr: Technique 4", "model.beta_max: with model.beta_min = 0.1"):
    assert reason in out

  # In-process: the same numbers, and a fixed subset with --max_examples.
  got = noise_schedule_command.main(["--config", CONFIG, f"--config.data.data_dir={tmp_path}",
                 "--config.data.image_size=8", "--max_examples=5"])
  again = noise_schedule_command.main(["--config", CONFIG, f"--config.data.data_dir={tmp_path}",
                   "--config.data.image_size=8", "--max_examples", "5"])
  assert got == again and got.max_distance <= expected and got.dim == 192


@pytest.mark.parametrize("args, expected", [
    (["--config", "configs/absent.py"], "cannot load config 'configs/absent.py'"),
    (["--config", CONFIG, "--config.data.bogus=1"], "Override 'data.bogus': the config has no"),
    (["--config", CONFIG], "config.data.source='folder' reads local files: set "
                           "config.data.data_dir"),
    (["--config", CONFIG, "--config.data.data_dir=/nonexistent/pictures"],
     "Image folder '/nonexistent/pictures' not found"),
    (["--config", CONFIG, "stray"], "unexpected arguments 'stray'"),
    (["--max_examples=3"], "the following arguments are required: --config"),
    (["--config", "configs/toy/gaussian_mixture.py"], "selects 2-D toy points"),
])
def test_bad_command_lines_give_one_line_errors(args, expected):
  result = run_command(*args)
  assert result.returncode != 0
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], \
      result.stderr[-2000:]
