"""Tests of ``evaluation.mnist_classifier`` (and its command, ``python -m mnist_classifier``): its
training on real MNIST, its cache and the metrics in its feature space.

One classifier is trained per module on a short budget (the shipped architecture, fewer steps);
the metric tests use it on slices of the real test set, where the expected orderings hold for
any reasonable feature space: two halves of the test set are close, blurred digits farther, noise
farthest; the test set's predicted classes are nearly uniform and sharp (IS near 10), a set of
only ones has one class (IS near 1, KL from uniform near log 10).
"""

import json
import logging
import math
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mnist_classifier as mnist_command
from datasets import readers
from evaluation import mnist_classifier as mc
from tests.conftest import MNIST_DIR

HAS_MNIST = os.path.isfile(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz"))
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"real MNIST not found in {MNIST_DIR}")

# The short budget: 9,600 training images (about 30 s on 2 CPU cores under the tests' XLA flags).
SHORT_STEPS, SHORT_BATCH = 150, 64
# Test images the metric tests use (its halves are compared), to keep feature passes short.
NUM_METRIC_IMAGES = 4000
KID_SUBSETS = 5


@pytest.fixture(scope="module")
def mnist():
  if not HAS_MNIST:
    pytest.skip(f"real MNIST not found in {MNIST_DIR}")
  return readers.load_idx(MNIST_DIR, "train"), readers.load_idx(MNIST_DIR, "test")


@pytest.fixture(scope="module")
def classifier(mnist):
  train_data, test_data = mnist
  return mc.train(jax.random.PRNGKey(0), train_data, test_data, steps=SHORT_STEPS,
                  batch_size=SHORT_BATCH)


@pytest.fixture(scope="module")
def test_outputs(classifier, mnist):
  """Images, labels, features and logits of NUM_METRIC_IMAGES test images in a random order: the
  test set's first and second 5,000 come from different writers, so its halves differ."""
  subset = np.random.default_rng(0).permutation(len(mnist[1].images))[:NUM_METRIC_IMAGES]
  images = mnist[1].images[subset]
  features, logits = mc.batched_features_and_logits(classifier.params, images)
  return images, mnist[1].labels[subset], features, logits


def _blur(images: np.ndarray) -> np.ndarray:
  """A separable [1, 2, 1] / 4 blur applied twice, of uint8 ``[N, 28, 28, 1]``; float [0, 1]."""
  x = images.astype(np.float32) / 255.0
  for _ in range(2):
    for axis in (1, 2):
      padded = np.pad(x, [(0, 0)] + [(1, 1) if a == axis else (0, 0) for a in (1, 2)] + [(0, 0)],
                      mode="edge")
      lo, mid, hi = (np.take(padded, np.arange(k, k + 28), axis=axis) for k in range(3))
      x = (lo + 2 * mid + hi) / 4
  return x


# ------------------------------------------------------------------------------------------------
# Training on real MNIST.


@needs_mnist
def test_short_training_reaches_the_lower_bar(classifier):
  assert classifier.info["steps"] == SHORT_STEPS
  assert classifier.info["num_test"] == 10000
  assert classifier.info["test_accuracy"] >= 0.95, classifier.info


@needs_mnist
def test_the_cache_round_trips_and_load_or_train_reads_it(classifier, mnist, tmp_path):
  path = str(tmp_path / "clf.msgpack")
  mc.save(path, classifier)
  loaded = mc.load_or_train(path, train_if_missing=False)
  assert loaded.info == json.loads(json.dumps(classifier.info))
  images = mnist[1].images[:16]
  for a, b in zip(mc.batched_features_and_logits(classifier.params, images),
                  mc.batched_features_and_logits(loaded.params, images)):
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------
# Metrics on real test images.


@needs_mnist
def test_frechet_distance_orders_halves_blur_and_noise(classifier, test_outputs):
  images, _, features, _ = test_outputs
  half = len(images) // 2
  reference = mc.statistics_of_features(features[:half])
  # Few KID subsets: each costs three 2000 x 2000 kernel matrices.
  halves = mc.metrics_from_features(features[half:], test_outputs[3][half:], reference,
                                    kid_subsets=KID_SUBSETS)
  blurred = mc.mnist_metrics(classifier.params, _blur(images[half:]), reference,
                             kid_subsets=KID_SUBSETS)
  noise = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (half, 28, 28, 1)))
  noisy = mc.mnist_metrics(classifier.params, noise, reference, kid_subsets=KID_SUBSETS)
  for metrics in (halves, blurred, noisy):
    assert metrics["mnist_num_samples"] == half
  assert halves["mnist_num_reference"] == half
  # Halves: only sampling error, far below what a visible change of the digits costs.
  assert halves["mnist_fd"] < 0.1 * blurred["mnist_fd"], (halves, blurred)
  assert blurred["mnist_fd"] < noisy["mnist_fd"], (blurred, noisy)
  assert abs(halves["mnist_kid"]) < 0.1 * blurred["mnist_kid"] < 0.1 * noisy["mnist_kid"]


@needs_mnist
def test_test_set_is_balanced_and_sharp(classifier, test_outputs):
  _, labels, features, logits = test_outputs
  reference = mc.statistics_of_features(features)
  metrics = mc.metrics_from_features(features, logits, reference, kid_subsets=KID_SUBSETS)
  true_histogram = np.bincount(labels, minlength=10) / len(labels)
  np.testing.assert_allclose(metrics["mnist_class_histogram"], true_histogram, atol=0.02)
  assert metrics["mnist_class_kl_from_uniform"] < 0.01
  # 10 needs confident predictions as well as accurate ones: the short budget gives about 7.3.
  assert metrics["mnist_is"] > 6.5, metrics
  # The same set as its own reference: zero Frechet distance, up to float64 round-off.
  assert metrics["mnist_fd"] < 1e-6 * np.trace(reference.sigma)


@needs_mnist
def test_a_set_of_ones_has_one_class(classifier, test_outputs):
  images, labels, _, _ = test_outputs
  ones = images[labels == 1]
  features, logits = mc.batched_features_and_logits(classifier.params, ones)
  metrics = mc.metrics_from_features(features, logits, mc.statistics_of_features(features),
                                     kid_subsets=KID_SUBSETS)
  assert int(np.argmax(metrics["mnist_class_histogram"])) == 1
  assert metrics["mnist_class_kl_from_uniform"] > 0.9 * math.log(10)
  assert metrics["mnist_is"] < 1.5, metrics


# ------------------------------------------------------------------------------------------------
# Pieces, without training.


def test_kl_from_uniform_and_histogram():
  assert mc.kl_from_uniform(np.full(10, 0.1)) == pytest.approx(0.0, abs=1e-12)
  assert mc.kl_from_uniform(np.eye(10)[3]) == pytest.approx(math.log(10))
  p = np.array([0.5, 0.5] + [0.0] * 8)
  assert mc.kl_from_uniform(p) == pytest.approx(math.log(5))
  logits = np.eye(10)[[0, 0, 2, 9]] * 5.0
  np.testing.assert_allclose(mc.class_histogram(logits), [0.5, 0, 0.25] + [0] * 6 + [0.25])


def test_metrics_from_features_match_evaluation_on_synthetic_features():
  rng = np.random.default_rng(0)
  reference = mc.statistics_of_features(rng.normal(size=(300, mc.FEATURE_DIM)))
  features = rng.normal(0.5, 1.0, size=(200, mc.FEATURE_DIM))
  logits = rng.normal(size=(200, 10)) * 3.0
  metrics = mc.metrics_from_features(features, logits, reference, kid_subsets=5,
                                     kid_subset_size=1000)
  assert metrics["mnist_num_samples"] == 200 and metrics["mnist_num_reference"] == 300
  assert metrics["mnist_kid_subset_size"] == 200
  diff = features.mean(0) - reference.mu
  # The mean shift alone is 0.25 per feature; the covariances agree up to sampling error.
  assert diff @ diff < metrics["mnist_fd"] < diff @ diff + 0.5 * mc.FEATURE_DIM
  assert metrics["mnist_kid"] > 0
  assert 1.0 < metrics["mnist_is"] < 10.0
  assert sum(metrics["mnist_class_histogram"]) == pytest.approx(1.0)


def test_batched_features_pad_the_last_chunk_and_read_uint8():
  params = mc.init_params(jax.random.PRNGKey(0))
  images = np.asarray(jax.random.randint(jax.random.PRNGKey(1), (7, 28, 28, 1), 0, 256),
                      np.uint8)
  features, logits = mc.batched_features_and_logits(params, images, batch_size=4)
  assert features.shape == (7, mc.FEATURE_DIM) and logits.shape == (7, 10)
  direct_f, direct_l = mc.features_and_logits(params, jnp.asarray(images / 255.0, jnp.float32))
  np.testing.assert_allclose(features, direct_f, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, direct_l, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"\[N, 28, 28, 1\]"):
    mc.batched_features_and_logits(params, np.zeros((2, 32, 32, 1)))


def test_batch_indices_are_epochs_of_permutations():
  indices = mc._batch_indices(jax.random.PRNGKey(0), 10, 3, steps=7)  # 3 batches per epoch
  assert indices.shape == (7, 3)
  for epoch in range(2):
    seen = indices[3 * epoch:3 * epoch + 3].ravel()
    assert len(set(seen.tolist())) == 9 and seen.max() < 10
  np.testing.assert_array_equal(indices, mc._batch_indices(jax.random.PRNGKey(0), 10, 3, 7))


def test_default_path_follows_the_cache_variable(monkeypatch, tmp_path):
  monkeypatch.setenv(mc.ENV_CACHE, str(tmp_path))
  assert mc.default_path() == str(tmp_path / f"mnist_classifier_v{mc.VERSION}.msgpack")
  monkeypatch.delenv(mc.ENV_CACHE)
  assert mc.default_path().startswith(os.path.expanduser("~"))


def test_missing_file_names_the_command_when_training_is_not_allowed(tmp_path):
  path = str(tmp_path / "absent.msgpack")
  with pytest.raises(FileNotFoundError) as error:
    mc.load_or_train(path, train_if_missing=False)
  message = str(error.value)
  assert "\n" not in message and f"python -m mnist_classifier --out {path}" in message


def test_a_missing_classifier_is_trained_on_first_use_and_then_read(tmp_path, caplog):
  rng = np.random.default_rng(0)
  tiny = readers.SplitData(rng.integers(0, 256, (128, 28, 28, 1), dtype=np.uint8),
                           np.arange(128, dtype=np.int32) % 10)
  path = str(tmp_path / "clf.msgpack")
  with caplog.at_level(logging.INFO):
    trained = mc.load_or_train(path, lambda split: tiny, steps=2)
  assert "training it now" in caplog.text and os.path.isfile(path)
  assert mc.load(path).info["steps"] == 2 and trained.info["num_train"] == 128
  caplog.clear()
  with caplog.at_level(logging.INFO):
    mc.load_or_train(path, lambda split: pytest.fail("read data although the file exists"))
  assert "training" not in caplog.text


def test_load_rejects_other_files(tmp_path):
  garbage = tmp_path / "garbage.msgpack"
  garbage.write_bytes(b"not msgpack at all")
  with pytest.raises(ValueError, match="does not hold"):
    mc.load(str(garbage))
  other = mc.MnistClassifier(channels=(8, 16)).init(jax.random.PRNGKey(0),
                                                     jnp.zeros((1, 28, 28, 1)))["params"]
  wrong = tmp_path / "other.msgpack"
  wrong.write_bytes(flax.serialization.to_bytes(other))
  with pytest.raises(ValueError, match="another MNIST classifier architecture"):
    mc.load(str(wrong))


def test_command_line_without_data_names_its_flag(monkeypatch, tmp_path):
  monkeypatch.setenv("SCORE_SDE_DATA_DIR", str(tmp_path))
  monkeypatch.delenv(mc.ENV_CACHE, raising=False)
  with pytest.raises(ValueError, match="pass --data_dir=") as error:
    mnist_command.main(["--steps", "1", "--out", str(tmp_path / "clf.msgpack")])
  assert "\n" not in str(error.value) and not (tmp_path / "clf.msgpack").exists()


def test_command_line_rejects_bad_arguments():
  with pytest.raises(ValueError, match="--steps must be >= 1"):
    mnist_command.main(["--steps", "0"])
  with pytest.raises(ValueError, match="unrecognized"):
    mnist_command.main(["--stepz", "3"])


# ----------------------------------------------------------------------------- in evaluation


def test_evaluation_scores_mnist_samples_with_the_cached_classifier(classifier, tmp_path):
  """``eval.sample_metrics = 'auto'`` on MNIST: the classifier at ``eval.mnist_classifier``
  scores the samples against the test split; features are cached per batch."""
  import configs  # pylint: disable=import-outside-toplevel
  from evaluation import eval_cache  # pylint: disable=import-outside-toplevel
  from evaluation import scorers  # pylint: disable=import-outside-toplevel
  from infra.devices import Devices  # pylint: disable=import-outside-toplevel
  from modes import evaluate  # pylint: disable=import-outside-toplevel
  path = str(tmp_path / "classifier.msgpack")
  mc.save(path, classifier)
  config = configs.load_config("configs/vpsde_mnist.py")
  config.data.data_dir, config.eval.mnist_classifier = MNIST_DIR, path
  scorer, why_not = scorers.build_sample_scorer(config, Devices())
  assert why_not == "" and scorer.name == "mnist_classifier"
  samples = readers.load_idx(MNIST_DIR, "test").images[:300].astype(np.float32) / 255.0
  cache = eval_cache.EvalCache(str(tmp_path / "eval"))
  result = evaluate._score_samples(scorer, samples, 200, cache, {"run": 1})
  assert result["mnist_num_samples"] == 300 and result["mnist_num_reference"] == 10000
  assert result["mnist_fd"] < 5.0 and result["mnist_is"] > 5.0  # real digits
  assert os.path.isfile(tmp_path / "eval" / "mnist_classifier_batch1.npz")
  assert evaluate._score_samples(scorer, samples, 200, cache, {"run": 1}) == result
  line = evaluate.describe_result({"num_samples": 300, "sampling_nfe": 10.0, **result})
  assert "MNIST classifier: FD" in line
  config.eval.sample_metrics = "none"
  assert scorers.build_sample_scorer(config, Devices()) == (None, "")
