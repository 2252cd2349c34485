"""Tests of the feature-space metrics in ``evaluation.statistics`` (FID, KID, Inception Score)
against closed forms and independent float64 computations on synthetic features and logits."""

import math

import numpy as np
import pytest
import scipy.linalg

import evaluation
from evaluation import eval_cache


def _spd(rng: np.random.Generator, dim: int) -> np.ndarray:
  """A random symmetric positive definite matrix with eigenvalues in [0.1, 3]."""
  q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
  return (q * rng.uniform(0.1, 3.0, dim)) @ q.T


def _scipy_fid(mu1, sigma1, mu2, sigma2) -> float:
  """FID through scipy's general (Schur) square root of the non-symmetric product S1 S2."""
  root = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2.0 * root))


def test_feature_statistics_are_mean_and_unbiased_covariance():
  features = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = evaluation.feature_statistics(features)
  assert mu.dtype == sigma.dtype == np.float64
  assert mu.shape == (6,) and sigma.shape == (6, 6)
  centred = features.astype(np.float64) - features.astype(np.float64).mean(0)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)
  np.testing.assert_allclose(mu, features.astype(np.float64).mean(0), rtol=1e-12)
  with pytest.raises(ValueError, match="N >= 2"):
    evaluation.feature_statistics(features[:1])


@pytest.mark.parametrize("n", [200, 20])  # 20 < 32 features: a singular covariance
def test_fid_of_a_set_against_itself_is_zero(n):
  features = np.random.default_rng(1).normal(size=(n, 32)) * 3.0 + 1.0
  stats = evaluation.feature_statistics(features)
  fid = evaluation.frechet_distance(*stats, *stats)
  assert 0.0 <= fid < 1e-8


def test_fid_matches_the_closed_form_of_commuting_gaussians():
  # Covariances sharing eigenvectors: FID = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
  rng = np.random.default_rng(2)
  q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  a, b = rng.uniform(0.1, 4.0, 16), rng.uniform(0.1, 4.0, 16)
  mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  fid = evaluation.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  assert fid == pytest.approx(expected, rel=1e-10)


def test_fid_of_sampled_features_matches_scipy_and_the_population_value():
  rng = np.random.default_rng(3)
  dim, n = 8, 20_000
  mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
  sigma1, sigma2 = _spd(rng, dim), _spd(rng, dim)
  x = rng.multivariate_normal(mu1, sigma1, size=n)
  y = rng.multivariate_normal(mu2, sigma2, size=n)
  stats_x, stats_y = evaluation.feature_statistics(x), evaluation.feature_statistics(y)
  fid = evaluation.frechet_distance(*stats_x, *stats_y)
  assert fid == pytest.approx(_scipy_fid(*stats_x, *stats_y), rel=1e-9)
  # The sample estimate is near the population FID (its bias and spread are O(dim / n)).
  assert fid == pytest.approx(_scipy_fid(mu1, sigma1, mu2, sigma2), rel=0.02)


@pytest.mark.parametrize("n, dim", [(5, 40), (40, 40), (60, 12)])
def test_fid_of_features_equals_fid_of_their_statistics(n, dim):
  """The low-rank route (fewer samples than features) and the direct one agree with scipy."""
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim)) * 0.3
  mu, sigma = rng.normal(size=dim), _spd(rng, dim)
  fid = evaluation.frechet_distance_of_features(x, mu, sigma)
  assert fid == pytest.approx(_scipy_fid(*evaluation.feature_statistics(x), mu, sigma), rel=1e-7)
  assert fid == pytest.approx(evaluation.frechet_distance(*evaluation.feature_statistics(x), mu,
                                                          sigma), rel=1e-7)


def test_fid_checks_shapes():
  with pytest.raises(ValueError, match="one F"):
    evaluation.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _brute_force_kid(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, summed pair by pair."""
  d = x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
  n, m = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
  return kxx + kyy - 2.0 * kxy


def test_kid_matches_a_brute_force_unbiased_estimate():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(25, 5)), rng.normal(size=(25, 5)) * 1.5 + 0.5
  # subset_size is clipped to 25, so every subset is a reordering of both whole sets.
  mean, std = evaluation.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
  assert mean == pytest.approx(_brute_force_kid(x, y), rel=1e-10)
  assert std < 1e-10 * abs(mean)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(600, 16)), rng.normal(size=(500, 16))
  same_mean, same_std = evaluation.kernel_inception_distance(x, y, num_subsets=20,
                                                             subset_size=200)
  shifted_mean, shifted_std = evaluation.kernel_inception_distance(x, y + 0.5, num_subsets=20,
                                                                   subset_size=200)
  assert abs(same_mean) < 3.0 * same_std + 1e-3
  assert shifted_mean > 10.0 * shifted_std
  # The draws are seeded: the same seed repeats the value, another one changes it.
  again = evaluation.kernel_inception_distance(x, y, num_subsets=20, subset_size=200)
  other = evaluation.kernel_inception_distance(x, y, num_subsets=20, subset_size=200, seed=1)
  assert again == (same_mean, same_std) and other[0] != same_mean


def _formula_inception_score(logits: np.ndarray, num_splits: int):
  """exp(E_x KL(p(y|x) || p(y))) per contiguous split, in plain Python floats."""
  scores = []
  for part in np.array_split(logits, num_splits):
    probs = [[math.exp(v) / sum(math.exp(w) for w in row) for v in row] for row in part]
    marginal = [sum(p[k] for p in probs) / len(probs) for k in range(len(probs[0]))]
    kl = [sum(pk * math.log(pk / mk) for pk, mk in zip(p, marginal)) for p in probs]
    scores.append(math.exp(sum(kl) / len(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_matches_its_formula():
  logits = np.random.default_rng(6).normal(size=(60, 7)) * 2.0
  score = evaluation.inception_score(logits, num_splits=4)
  np.testing.assert_allclose(score, _formula_inception_score(logits, 4), rtol=1e-10)


def test_inception_score_limits():
  # Confident predictions spread evenly over K classes score K; identical predictions score 1.
  k = 10
  confident = np.eye(k)[np.arange(200) % k] * 50.0
  mean, std = evaluation.inception_score(confident, num_splits=5)
  assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
  same = np.tile(np.random.default_rng(7).normal(size=(1, k)), (100, 1))
  assert evaluation.inception_score(same, num_splits=5)[0] == pytest.approx(1.0, abs=1e-12)
  # Two classes no row predicts, with logits so far below that their probabilities underflow.
  unused = np.concatenate([confident, np.zeros((200, 2))], axis=1) * 1e3
  assert evaluation.inception_score(unused, num_splits=5)[0] == pytest.approx(k, rel=1e-6)


def test_fid_sample_warning():
  assert evaluation.fid_sample_warning(50_000) is None
  warning = evaluation.fid_sample_warning(2_000)
  assert "2000" in warning and "50000" in warning and "\n" not in warning


def _linear_feature_fn(calls):
  """Features = a fixed linear map of the pixels, logits = their first 3 features; counts
  calls and drops the rows with mask 0, as a real feature function does."""
  weights = np.random.default_rng(8).normal(size=(4 * 4, 6))

  def feature_fn(batch):
    calls.append(1)
    keep = batch["mask"] > 0
    features = batch["image"].reshape(len(batch["image"]), -1)[keep] @ weights
    return features, features[:, :3]

  return feature_fn


def _image_batches(n_batches=3, batch_size=8, padding=3):
  rng = np.random.default_rng(9)
  batches = []
  for k in range(n_batches):
    mask = np.ones(batch_size)
    if k == n_batches - 1:
      mask[batch_size - padding:] = 0.0
    batches.append({"image": rng.uniform(size=(batch_size, 4, 4, 1)), "mask": mask})
  return batches


def test_reference_statistics_accumulate_every_real_row():
  batches, calls = _image_batches(), []
  stats = evaluation.reference_statistics(_linear_feature_fn(calls), batches)
  images = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
  assert len(calls) == 3 and stats["pool_3"].shape == (21, 6) and stats["logits"].shape == (21, 3)
  expected = images.reshape(21, -1) @ np.random.default_rng(8).normal(size=(16, 6))
  np.testing.assert_allclose(stats["pool_3"], expected, rtol=1e-5)
  mu, sigma = evaluation.feature_statistics(stats["pool_3"])
  np.testing.assert_array_equal(stats["mu"], mu)
  np.testing.assert_array_equal(stats["sigma"], sigma)


def test_reference_statistics_resume_from_cached_batches(tmp_path):
  batches, cache = _image_batches(), eval_cache.EvalCache(str(tmp_path))
  first_calls, again_calls, changed_calls = [], [], []
  first = evaluation.reference_statistics(_linear_feature_fn(first_calls), batches, cache=cache,
                                          settings={"data": "a"})
  # An interrupted pass: the last batch's piece is lost, only it is computed again.
  (tmp_path / "features_batch2.npz").unlink()
  again = evaluation.reference_statistics(_linear_feature_fn(again_calls), batches, cache=cache,
                                          settings={"data": "a"})
  evaluation.reference_statistics(_linear_feature_fn(changed_calls), batches, cache=cache,
                                  settings={"data": "b"})
  assert (len(first_calls), len(again_calls), len(changed_calls)) == (3, 1, 3)
  np.testing.assert_array_equal(first["pool_3"], again["pool_3"])
  np.testing.assert_array_equal(first["sigma"], again["sigma"])


def test_statistics_files_round_trip_and_the_other_layouts(tmp_path):
  pool_3 = np.random.default_rng(10).normal(size=(40, 5))
  logits = np.random.default_rng(11).normal(size=(40, 3))
  mu, sigma = evaluation.feature_statistics(pool_3)
  ours = str(tmp_path / "stats.npz")
  evaluation.save_statistics(ours, {"mu": mu, "sigma": sigma, "pool_3": pool_3, "logits": logits})
  loaded = evaluation.load_statistics(ours)
  assert sorted(loaded) == ["logits", "mu", "pool_3", "sigma"]
  np.testing.assert_array_equal(loaded["sigma"], sigma)
  assert loaded["pool_3"].dtype == np.float32
  # The authors' files hold the activations only; pytorch-fid's the Gaussian only.
  authors, gaussian, other = (str(tmp_path / n) for n in ("a.npz", "g.npz", "o.npz"))
  np.savez(authors, pool_3=pool_3.astype(np.float32))
  np.savez(gaussian, mu=mu, sigma=sigma)
  np.savez(other, features=pool_3)
  from_authors = evaluation.load_statistics(authors)
  np.testing.assert_allclose(from_authors["sigma"], sigma, rtol=1e-5, atol=1e-6)
  assert "pool_3" in from_authors and "pool_3" not in evaluation.load_statistics(gaussian)
  with pytest.raises(ValueError, match="found features"):
    evaluation.load_statistics(other)
  with pytest.raises(ValueError, match="'extra'"):
    evaluation.save_statistics(ours, {"mu": mu, "extra": mu})


def test_inception_metrics_report_counts_and_the_fid_warning():
  rng = np.random.default_rng(12)
  reference_pool = rng.normal(size=(300, 4))
  samples, logits = rng.normal(size=(200, 4)) + 0.2, rng.normal(size=(200, 10))
  full = {"pool_3": reference_pool, **dict(zip(("mu", "sigma"),
                                               evaluation.feature_statistics(reference_pool)))}
  result = evaluation.inception_metrics(samples, logits, full, kid_subsets=5,
                                        kid_subset_size=1000)
  assert result["fid"] == pytest.approx(evaluation.frechet_distance(
      *evaluation.feature_statistics(samples), full["mu"], full["sigma"]))
  assert result["fid_num_samples"] == result["kid_num_samples"] == 200
  assert result["kid_subset_size"] == 200 and result["inception_score_num_samples"] == 200
  assert result["fid_warning"] == evaluation.fid_sample_warning(200)
  assert result["inception_score"] == evaluation.inception_score(logits)[0]
  gaussian_only = evaluation.inception_metrics(samples, logits,
                                               {"mu": full["mu"], "sigma": full["sigma"]})
  assert "kid" not in gaussian_only and gaussian_only["fid"] == result["fid"]
