"""``datasets.batching``: evaluation passes visit every example once in stored order and resume,
process shards concatenate to the global batch, training streams are seeded permutations, flips
and dequantization only where asked, prefetching changes nothing; the model's view of a batch
(labels for conditional networks only).

Statistical tolerances are 5 standard errors of the tested statistic at the stated sample size.
"""

import numpy as np
import pytest

import dequantization
from datasets import batching
from datasets import readers
from tests.datasets.data_files import collect


def indexed_split(n, h=4, w=5, c=1):
  """Images ``[n, h, w, c]`` whose pixels (0, 0) and (0, 1) encode the example index, marked in
  row 1 so that a left-right flip is visible; labels i % 7."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 1, 0] = np.arange(n) // 256
  # Orientation marker: 255 at (1, 0) iff flipped.
  images[:, 1, 0, 0], images[:, 1, w - 1, 0] = 0, 255
  return readers.SplitData(images, (np.arange(n) % 7).astype(np.int32))


def decode_index(batch):
  """Example index of each row of a batch made from :func:`indexed_split` (no flips or noise)."""
  pixels = np.rint(batch["image"] * 255).astype(np.int64)
  return pixels[:, 0, 0, 0] + 256 * pixels[:, 0, 1, 0]


# ------------------------------------------------------------------------------------------------
# Evaluation passes.


@pytest.mark.parametrize("n,batch_size", [(103, 20), (40, 20), (7, 16)])
def test_eval_visits_every_example_once_in_stored_order(n, batch_size):
  data = indexed_split(n)
  batches = batching.make_batches(data, batch_size=batch_size, train=False, prefetch=2)
  assert batches.num_batches == -(-n // batch_size)
  got = collect(batches)
  assert len(got) == batches.num_batches
  for b in got:
    assert b["image"].shape == (batch_size, 4, 5, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
    pad = b["mask"] == 0
    assert np.all(b["image"][pad] == 0) and np.all(b["label"][pad] == -1)
  index = np.concatenate([decode_index(b)[b["mask"] > 0] for b in got])
  assert index.tolist() == list(range(n))  # each once, in stored order
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in got])
  assert np.array_equal(labels, data.labels)
  images = np.concatenate([b["image"][b["mask"] > 0] for b in got])
  assert np.array_equal(np.rint(images * 255).astype(np.uint8), data.images)
  assert sum(b["mask"].sum() for b in got) == n
  again = collect(batching.make_batches(data, batch_size=batch_size, train=False, prefetch=0))
  assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(got, again))


def test_eval_resume_gives_the_suffix():
  data = indexed_split(103)
  full = collect(batching.make_batches(data, batch_size=20, train=False))
  resumed = batching.make_batches(data, batch_size=20, train=False, start_batch=3)
  assert len(resumed) == 3
  rest = collect(resumed)
  assert len(rest) == 3
  for a, b in zip(full[3:], rest):
    for key in ("image", "label", "mask"):
      assert np.array_equal(a[key], b[key])
  assert np.array_equal(resumed.batch(4)["image"], full[4]["image"])
  with pytest.raises(IndexError):
    resumed.batch(6)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_the_global_batch(train, process_count):
  data = indexed_split(50)
  kwargs = dict(batch_size=8, train=train, seed=3, random_flip=train, uniform_dequantization=True)
  whole = batching.make_batches(data, **kwargs)
  shards = [batching.make_batches(data, process_index=p, process_count=process_count, **kwargs)
            for p in range(process_count)]
  assert shards[0].local_batch_size == 8 // process_count
  for k in range(whole.num_batches or 15):  # 15 training batches span 2.4 epochs
    parts = [s.batch(k) for s in shards]
    for key in ("image", "label", "mask"):
      assert np.array_equal(np.concatenate([p[key] for p in parts]), whole.batch(k)[key])
  with pytest.raises(ValueError, match="multiple of the process count"):
    batching.make_batches(data, batch_size=9, train=train, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    batching.make_batches(data, batch_size=8, train=train, process_index=2, process_count=2)


# ------------------------------------------------------------------------------------------------
# Training streams.


def test_train_stream_epochs_are_permutations_and_deterministic():
  n, batch_size = 50, 16
  data = indexed_split(n)
  stream = batching.make_batches(data, batch_size=batch_size, train=True, seed=7)
  assert stream.num_batches is None
  got = collect(stream, 13)  # 208 examples: 4 full epochs and a bit
  assert all(b["image"].shape == (batch_size, 4, 5, 1) and np.all(b["mask"] == 1) for b in got)
  index = np.concatenate([decode_index(b) for b in got])
  epochs = [index[e * n:(e + 1) * n] for e in range(4)]
  for order in epochs:
    assert sorted(order.tolist()) == list(range(n))  # each epoch: every example exactly once
  assert all(not np.array_equal(epochs[0], e) for e in epochs[1:])  # reshuffled every epoch
  assert not np.array_equal(epochs[0], np.arange(n))
  same = collect(batching.make_batches(data, batch_size=batch_size, train=True, seed=7), 13)
  assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(got, same))
  other = collect(batching.make_batches(data, batch_size=batch_size, train=True, seed=8), 4)
  assert not np.array_equal(np.concatenate([decode_index(b) for b in other]), index[:64])
  resumed = collect(batching.make_batches(data, batch_size=batch_size, train=True, seed=7,
                                          start_batch=5), 3)
  assert all(np.array_equal(a["label"], b["label"]) for a, b in zip(got[5:8], resumed))


def test_random_flip_only_when_enabled_and_only_in_training():
  n = 2000
  data = indexed_split(n, h=3, w=6)
  originals = data.images.astype(np.float32) / 255

  def flipped_fraction(**kwargs):
    flips = []
    for b in collect(batching.make_batches(data, batch_size=100, seed=1, **kwargs), 20):
      for image in b["image"]:
        flipped = image[1, 0, 0] == 1.0
        oriented = image[:, ::-1] if flipped else image
        expected = originals[int(decode_index({"image": oriented[None]})[0])]
        assert np.array_equal(oriented, expected)  # the example itself, mirrored or not
        flips.append(flipped)
    assert len(flips) == n
    return np.mean(flips)

  assert abs(flipped_fraction(train=True, random_flip=True) - 0.5) < 5 * np.sqrt(0.25 / n)
  assert flipped_fraction(train=True, random_flip=False) == 0
  assert flipped_fraction(train=False, random_flip=True) == 0


def test_uniform_dequantization_range_and_distribution():
  data = indexed_split(64, h=8, w=8)
  batches = batching.make_batches(data, batch_size=64, train=False, uniform_dequantization=True,
                                  seed=5)
  x = batches.batch(0)["image"]
  # The added noise, exactly (x * 256 is exact in float32).
  u = x.astype(np.float64) * 256 - data.images
  n = u.size  # 4096 pixels
  assert 0.0 <= x.min() and x.max() <= 1.0
  assert u.min() >= 0.0 and u.max() <= 1.0
  # U[0, 1): mean 1/2 (std 1/sqrt(12 n)), variance 1/12 (std sqrt(1/180 / n)).
  assert abs(u.mean() - 0.5) < 5 / np.sqrt(12 * n)
  assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / n)
  assert np.histogram(u, bins=4, range=(0, 1))[0].min() > n / 4 - 5 * np.sqrt(n * 3 / 16)
  # Same seed: same noise; another seed: new noise (e.g. for another bits/dim repeat).
  def noisy(seed):
    return batching.make_batches(data, batch_size=64, train=False, uniform_dequantization=True,
                                 seed=seed).batch(0)["image"]
  assert np.array_equal(noisy(5), x)
  assert not np.array_equal(noisy(6), x)
  plain = batching.make_batches(data, batch_size=64, train=False).batch(0)["image"]
  assert np.array_equal(plain * np.float32(255), data.images.astype(np.float32))


def test_fewer_bits_keep_the_top_bits_on_their_own_scale():
  """5-bit data: ``v >> 3`` in {0..31}, ``v5 / 31`` plain and ``(v5 + u) / 32`` dequantized; the
  bits/dim's ``to_levels`` recovers ``v5``."""
  data = indexed_split(64, h=8, w=8)
  top = data.images >> 3
  plain = batching.make_batches(data, batch_size=64, train=False, num_bits=5).batch(0)["image"]
  np.testing.assert_allclose(plain * 31, top, atol=1e-5)
  assert np.array_equal(np.asarray(dequantization.to_levels(plain, 5)), top)
  noisy = batching.make_batches(data, batch_size=64, train=False, num_bits=5,
                                uniform_dequantization=True, seed=1).batch(0)["image"]
  assert np.array_equal(np.floor(noisy.astype(np.float64) * 32), top)


def test_prefetch_matches_direct_batches_and_propagates_errors():
  data = indexed_split(30)
  direct = batching.make_batches(data, batch_size=4, train=True, prefetch=0)
  ahead = batching.make_batches(data, batch_size=4, train=True, prefetch=3)
  for k, b in enumerate(collect(ahead, 10)):
    assert np.array_equal(b["image"], direct.batch(k)["image"])

  def produce(k):
    if k == 2:
      raise RuntimeError("boom")
    return {"k": k}
  failing = batching.Batches(produce, batch_size=1, local_batch_size=1, num_batches=5,
                             num_examples=5, start_batch=0, prefetch=2)
  it = iter(failing)
  assert next(it) == {"k": 0} and next(it) == {"k": 1}
  with pytest.raises(RuntimeError, match="boom"):
    next(it)


# ------------------------------------------------------------------------------------------------
# The model's view.


def test_model_batch_gives_labels_to_conditional_networks_only():
  batch = {"image": np.full((4, 2), 0.5, np.float32), "label": np.array([1, 0, 2, -1]),
           "mask": np.array([1.0, 1.0, 1.0, 0.0])}
  np.testing.assert_array_equal(batching.model_batch(batch, lambda x: 2 * x), np.ones((4, 2)))
  got = batching.model_batch(batch, lambda x: x, num_classes=3)
  np.testing.assert_array_equal(got["label"], [1, 0, 2, 3])  # padding: the null label
  unlabelled = dict(batch, label=np.full(4, -1))
  with pytest.raises(ValueError, match="the data set has no labels") as error:
    batching.model_batch(unlabelled, lambda x: x, num_classes=3)
  assert "--config.model.num_classes=0" in str(error.value) and "\n" not in str(error.value)
  with pytest.raises(ValueError, match="the data have label 2"):
    batching.model_batch(batch, lambda x: x, num_classes=2)
