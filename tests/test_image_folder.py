"""Tests for the 'folder' data source: ``readers.list_image_folder`` / ``load_image_folder`` on
PNG and JPEG files written here, the ``datasets`` entry point over them, and a tiny train and
evaluate run of ``configs/image_folder.py`` on a folder (with FID / IS / KID from random Inception
weights).

Few distinct image sizes are used: the resize compiles once per distinct square side.
"""

import functools
import logging
import os

import numpy as np
import pytest
from PIL import Image

import datasets
import evaluation
import run_lib
from configs import image_folder
from configs.default_configs import get_default_configs
from datasets import readers
from evaluation import inception
from tests.test_inception import random_state_dict


def write_image(path, pixels, format=None):  # pylint: disable=redefined-builtin
  """Writes uint8 ``pixels`` ``[H, W, C]`` (C = 1: grayscale) to ``path``, making its folders."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, format=format)


def random_pixels(rng, h, w, c=3):
  return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def write_flat_folder(root, n, size=(12, 8)):
  """``n`` RGB PNGs ``img_000.png``... directly in ``root``; returns their pixels by name."""
  rng = np.random.default_rng(n)
  pixels = {}
  for i in range(n):
    name = f"img_{i:03d}.png"
    pixels[name] = random_pixels(rng, *size)
    write_image(os.path.join(root, name), pixels[name])
  return pixels


def folder_config(data_dir, image_size=8, num_channels=3, **data):
  config = image_folder.get_config()
  config.data.data_dir = str(data_dir)
  config.data.image_size = image_size
  config.data.num_channels = num_channels
  config.data.update(data)
  return config


def one_line(error):
  return "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------
# Reading a folder.


def test_mixed_formats_sizes_and_modes_load_deterministically(tmp_path):
  """RGB, grayscale, RGBA and palette PNGs, JPEGs with upper-case extensions, nested folders;
  other files and hidden ones are skipped, every image comes out [S, S, C] uint8."""
  rng = np.random.default_rng(0)
  write_image(str(tmp_path / "a.png"), random_pixels(rng, 12, 8))
  write_image(str(tmp_path / "b.PNG"), random_pixels(rng, 8, 12, 1))
  write_image(str(tmp_path / "c.JPG"), random_pixels(rng, 10, 10), format="JPEG")
  write_image(str(tmp_path / "d.jpeg"), random_pixels(rng, 10, 10, 1), format="JPEG")
  Image.fromarray(random_pixels(rng, 8, 8, 4)).save(tmp_path / "e.png")  # RGBA
  Image.fromarray(random_pixels(rng, 8, 8, 1)[..., 0]).convert("P").save(tmp_path / "f.png")
  write_image(str(tmp_path / "deep" / "er" / "g.png"), random_pixels(rng, 8, 12))
  (tmp_path / "notes.txt").write_text("not an image")
  (tmp_path / ".hidden.png").write_bytes(b"a macOS resource fork, not a PNG")
  os.makedirs(tmp_path / ".cache")
  (tmp_path / ".cache" / "x.png").write_bytes(b"skipped with its hidden folder")

  names = ["a.png", "b.PNG", "c.JPG", "d.jpeg", "deep/er/g.png", "e.png", "f.png"]
  train_files, _ = readers.list_image_folder(str(tmp_path), "train")
  test_files, _ = readers.list_image_folder(str(tmp_path), "test")
  assert len(test_files) == 1  # max(1, round(0.05 * 7))
  listed = sorted(os.path.relpath(f, tmp_path) for f in train_files + test_files)
  assert listed == names
  assert train_files == sorted(train_files) and len(train_files) == 6

  for channels in (1, 3):
    train = readers.load_image_folder(str(tmp_path), "train", 8, channels)
    assert train.images.shape == (6, 8, 8, channels) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32 and np.all(train.labels == -1)  # not all in subfolders
    again = readers.load_image_folder(str(tmp_path), "train", 8, channels)
    assert np.array_equal(train.images, again.images)
    test = readers.load_image_folder(str(tmp_path), "test", 8, channels)
    assert test.images.shape == (1, 8, 8, channels)


def test_each_image_is_fit_images_of_its_pixels(tmp_path):
  """The crop and resize are ``readers.fit_images`` applied to each decoded image, for PNG
  (lossless: the written pixels) and JPEG (Pillow's decoding), RGB and grayscale."""
  rng = np.random.default_rng(1)
  wide, tall = random_pixels(rng, 12, 20), random_pixels(rng, 20, 12)
  write_image(str(tmp_path / "train" / "wide.png"), wide)
  write_image(str(tmp_path / "train" / "tall.jpg"), tall, format="JPEG")
  write_image(str(tmp_path / "test" / "x.png"), wide)
  tall_decoded = np.asarray(Image.open(tmp_path / "train" / "tall.jpg").convert("RGB"))
  got = readers.load_image_folder(str(tmp_path), "train", 8, 3).images  # order: tall, wide
  assert np.array_equal(got[0], readers.fit_images(tall_decoded[None], 8)[0])
  assert np.array_equal(got[1], readers.fit_images(wide[None], 8)[0])
  # At the side of the central square nothing is resized: the crop itself.
  got = readers.load_image_folder(str(tmp_path), "train", 12, 3).images
  assert np.array_equal(got[1], wide[:, 4:16])
  gray = np.asarray(Image.fromarray(wide).convert("L"))[..., None]
  got = readers.load_image_folder(str(tmp_path), "train", 8, 1).images
  assert np.array_equal(got[1], readers.fit_images(gray[None], 8)[0])


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
  wide = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040  # 0 .. 65520
  os.makedirs(tmp_path / "train")
  Image.fromarray(wide).save(tmp_path / "train" / "deep.png")
  assert Image.open(tmp_path / "train" / "deep.png").mode == "I;16"
  write_image(str(tmp_path / "test" / "x.png"), np.zeros((8, 8, 1), np.uint8))
  expected = np.rint(wide / 257.0).astype(np.uint8)
  gray = readers.load_image_folder(str(tmp_path), "train", 8, 1).images[0]
  assert np.array_equal(gray[..., 0], expected)
  rgb = readers.load_image_folder(str(tmp_path), "train", 8, 3).images[0]
  assert np.array_equal(rgb, np.repeat(expected[..., None], 3, axis=-1))


def test_held_out_split_sizes_disjointness_and_stability(tmp_path):
  pixels = write_flat_folder(str(tmp_path / "a"), 40)
  train, train_labels = readers.list_image_folder(str(tmp_path / "a"), "train", 0.1)
  test, _ = readers.list_image_folder(str(tmp_path / "a"), "test", 0.1)
  assert (len(train), len(test)) == (36, 4) and len(train_labels) == 36
  names = lambda files: [os.path.basename(f) for f in files]
  assert not set(train) & set(test) and sorted(names(train + test)) == sorted(pixels)
  assert train == sorted(train) and test == sorted(test)
  # The same files created in the opposite order: the same split.
  for name in reversed(sorted(pixels)):
    write_image(str(tmp_path / "b" / name), pixels[name])
  assert names(readers.list_image_folder(str(tmp_path / "b"), "test", 0.1)[0]) == names(test)
  # One more image (test still 4): at most one other image changes split.
  write_image(str(tmp_path / "b" / "zzz.png"), pixels["img_000.png"])
  moved = set(names(readers.list_image_folder(str(tmp_path / "b"), "test", 0.1)[0])) ^ set(
      names(test))
  assert len(moved - {"zzz.png"}) <= 1
  # Decoded images follow the listed order.
  data = readers.load_image_folder(str(tmp_path / "a"), "test", 8, 3, holdout_fraction=0.1)
  assert len(data.images) == 4
  assert all(np.array_equal(x, pixels[n][2:10]) for x, n in zip(data.images, names(test)))
  # Two images: one each.
  write_flat_folder(str(tmp_path / "two"), 2)
  assert [len(readers.list_image_folder(str(tmp_path / "two"), s)[0]) for s in ("train", "test")
          ] == [1, 1]


def test_train_and_test_subfolders_and_class_labels(tmp_path):
  """train/ with val/ are the splits; class folders give the same indices in both, from the
  sorted names of all of them."""
  rng = np.random.default_rng(2)
  for path in ("train/dog/1.png", "train/cat/1.png", "train/cat/2.png", "train/emu/sub/1.png",
               "val/dog/9.png", "val/ant/9.png", "ignored.png", "other/x.png"):
    write_image(str(tmp_path / path), random_pixels(rng, 8, 8))
  files, labels = readers.list_image_folder(str(tmp_path), "train")
  assert [os.path.relpath(f, tmp_path) for f in files] == [
      "train/cat/1.png", "train/cat/2.png", "train/dog/1.png", "train/emu/sub/1.png"]
  assert labels.tolist() == [1, 1, 2, 3] and labels.dtype == np.int32  # ant=0 cat=1 dog=2 emu=3
  files, labels = readers.list_image_folder(str(tmp_path), "test")
  assert [os.path.relpath(f, tmp_path) for f in files] == ["val/ant/9.png", "val/dog/9.png"]
  assert labels.tolist() == [0, 2]
  data = readers.load_image_folder(str(tmp_path), "test", 8, 3)
  assert data.images.shape == (2, 8, 8, 3) and data.labels.tolist() == [0, 2]

  # test/ wins over val/; a split with an image outside a class folder has no labels.
  write_image(str(tmp_path / "test" / "loose.png"), random_pixels(rng, 8, 8))
  files, labels = readers.list_image_folder(str(tmp_path), "test")
  assert [os.path.relpath(f, tmp_path) for f in files] == ["test/loose.png"]
  assert labels.tolist() == [-1] and np.all(readers.list_image_folder(str(tmp_path), "train")[1]
                                            == -1)


def test_held_out_split_of_train_and_of_class_folders(tmp_path):
  """Without a test folder the test split is held out of train/ (if present), labels kept."""
  rng = np.random.default_rng(3)
  for i in range(10):
    for cls in ("b", "a"):
      write_image(str(tmp_path / "train" / cls / f"{i}.png"), random_pixels(rng, 8, 8))
  train, train_labels = readers.list_image_folder(str(tmp_path), "train", 0.2)
  test, test_labels = readers.list_image_folder(str(tmp_path), "test", 0.2)
  assert (len(train), len(test)) == (16, 4)
  for files, labels in ((train, train_labels), (test, test_labels)):
    expected = [{"a": 0, "b": 1}[os.path.basename(os.path.dirname(f))] for f in files]
    assert labels.tolist() == expected
    assert all(os.path.relpath(f, tmp_path).startswith("train/") for f in files)


@pytest.mark.parametrize("case, error, match", [
    ("missing", FileNotFoundError, "Image folder .*absent' not found"),
    ("a file", ValueError, "is a file"),
    ("no images", ValueError, r"No images \(.png, .jpg, .jpeg, any letter case\) found in .*empty"),
    ("empty test folder", ValueError, r"No images .* found in .*split.test'"),
    ("corrupt", ValueError, r"Cannot decode image .*broken.png: .*identify"),
    ("truncated", ValueError, r"Cannot decode image .*cut.jpg: (?i:.*truncated)"),
    ("one image", ValueError, "has 1 image.*too few to hold out 1 for the test split"),
    ("fraction", ValueError, "holdout_fraction must lie strictly between 0 and 1, got 1.0"),
    ("channels", ValueError, "num_channels to 1 or 3 \\(got 4\\)"),
])
def test_bad_folders_give_one_line_errors(tmp_path, case, error, match):
  rng = np.random.default_rng(4)
  path, kwargs = str(tmp_path / "data"), {}
  if case == "missing":
    path = str(tmp_path / "absent")
  elif case == "a file":
    path = str(tmp_path / "x.png")
    write_image(path, random_pixels(rng, 8, 8))
  elif case == "no images":
    path = str(tmp_path / "empty")
    os.makedirs(os.path.join(path, "sub"))
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
  elif case == "empty test folder":
    path = str(tmp_path / "split")
    write_image(os.path.join(path, "train", "a.png"), random_pixels(rng, 8, 8))
    os.makedirs(os.path.join(path, "test"))
  elif case == "corrupt":
    write_flat_folder(path, 3)
    (tmp_path / "data" / "broken.png").write_bytes(b"\x89PNG but then nothing")
  elif case == "truncated":
    write_flat_folder(path, 3)
    write_image(os.path.join(path, "cut.jpg"), random_pixels(rng, 32, 32), format="JPEG")
    raw = (tmp_path / "data" / "cut.jpg").read_bytes()
    (tmp_path / "data" / "cut.jpg").write_bytes(raw[:len(raw) // 2])
  elif case == "one image":
    write_flat_folder(path, 1)
  elif case == "fraction":
    write_flat_folder(path, 3)
    kwargs = {"holdout_fraction": 1.0}
  else:
    write_flat_folder(path, 3)
  channels = 4 if case == "channels" else 3
  with pytest.raises(error, match=match) as info:
    # A bad file is in one of the two splits.
    for split in ("train", "test"):
      readers.load_image_folder(path, split, 8, channels, **kwargs)
  assert one_line(info)


# ------------------------------------------------------------------------------------------------
# Through datasets.


def test_folder_source_through_get_dataset(tmp_path):
  write_flat_folder(str(tmp_path), 20)
  config = folder_config(tmp_path, holdout_fraction=0.25)
  assert datasets.num_examples(config, "train") == 15
  assert datasets.num_examples(config, "test") == 5
  batches = list(datasets.get_dataset(config, split="test", batch_size=4, train=False))
  assert len(batches) == 2 and sum(b["mask"].sum() for b in batches) == 5
  first = batches[0]
  assert first["image"].shape == (4, 8, 8, 3) and first["image"].dtype == np.float32
  assert 0.0 <= first["image"].min() and first["image"].max() <= 1.0
  assert np.all(first["label"] == -1)
  expected = readers.load_image_folder(str(tmp_path), "test", 8, 3, 0.25).images
  got = np.concatenate([b["image"][b["mask"] > 0] for b in batches])
  assert np.array_equal(np.rint(got * 255).astype(np.uint8), expected)
  stream = iter(datasets.get_dataset(config, split="train", batch_size=8, train=True))
  assert next(stream)["image"].shape == (8, 8, 8, 3)

  # A config without data.holdout_fraction holds out 5 % (here 1 image); grayscale works too.
  config = get_default_configs()
  config.data.update(dict(source="folder", dataset="My Photos", data_dir=str(tmp_path),
                          image_size=6, num_channels=1))
  assert "holdout_fraction" not in config.data
  assert datasets.num_examples(config, "test") == 1
  assert datasets.load_split(config, "train").images.shape == (19, 6, 6, 1)


def test_folder_source_errors_through_datasets(tmp_path):
  config = folder_config("")
  with pytest.raises(ValueError, match="set config.data.data_dir") as info:
    datasets.load_split(config, "train")
  assert one_line(info)
  config = folder_config(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere") as info:
    datasets.num_examples(config, "test")
  assert one_line(info)
  with pytest.raises(ValueError, match="cannot be read from source 'folder'"):
    datasets.load_split(folder_config(tmp_path, dataset="cifar10"), "train")


# ------------------------------------------------------------------------------------------------
# Training and evaluation.


def test_trains_and_evaluates_on_a_folder(tmp_path, caplog, monkeypatch):
  """configs/image_folder.py with a tiny network: 4 steps, one snapshot, then its loss, bits/dim
  and samples."""
  write_flat_folder(str(tmp_path / "images"), 20, size=(8, 10))
  config = folder_config(tmp_path / "images", holdout_fraction=0.2)
  # No evaluation during training (eval_freq > n_iters): one compilation fewer.
  config.training.update(dict(n_iters=4, batch_size=8, n_jitted_steps=1, log_freq=2,
                              eval_freq=100, snapshot_freq=4, snapshot_freq_for_preemption=4,
                              snapshot_sampling=False))
  config.model.update(dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                           num_scales=4, dropout=0.0))
  config.eval.update(dict(begin_ckpt=1, end_ckpt=1, batch_size=8, num_samples=8, enable_bpd=True,
                          bpd_num_examples=2, rtol=1e-2, atol=1e-2))
  config.sampling.update(dict(ode_rtol=1e-2, ode_atol=1e-2))
  workdir = str(tmp_path / "run")
  run_lib.train(config, workdir)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "4"))
  summary = run_lib.evaluate(config, workdir)
  assert list(summary) == ["4"]
  result = summary["4"]
  assert np.isfinite(result["loss"]) and np.isfinite(result["bpd"])
  assert result["bpd_count"] == 2
  assert os.path.exists(os.path.join(workdir, "eval", "step_4", "samples_0.npz"))
  assert "fid" not in result  # no Inception weights configured: a warning, no crash

  # FID / IS / KID with (random) Inception weights: reference statistics once, then in eval.
  # The network at its smallest input (75 px, not FID's 299): the same code path, 16x cheaper.
  monkeypatch.setattr(inception, "inception_features",
                      functools.partial(inception.inception_features, size=75))
  weights = str(tmp_path / "inception.npz")
  inception.save_state_dict(weights, random_state_dict())
  config.eval.update(dict(inception_weights=weights, fid_stats=str(tmp_path / "stats.npz"),
                          enable_bpd=False, enable_loss=False, kid_subset_size=4))
  assert run_lib.fid_stats(config, workdir) == str(tmp_path / "stats.npz")
  reference = evaluation.load_statistics(str(tmp_path / "stats.npz"))
  assert reference["pool_3"].shape == (16, 2048)  # every training image once
  result = run_lib.evaluate(config, workdir, "eval_fid")["4"]
  assert result["fid"] > 0 and result["fid_num_samples"] == 8
  assert "FID from 8 samples" in result["fid_warning"]
  assert np.isfinite(result["kid"]) and result["kid_subset_size"] == 4
  assert 1.0 <= result["inception_score"] <= 1008.0
  piece = os.path.join(workdir, "eval_fid", "step_4", "inception_batch0.npz")
  written = os.path.getmtime(piece)
  assert run_lib.evaluate(config, workdir, "eval_fid")["4"]["fid"] == result["fid"]
  assert os.path.getmtime(piece) == written  # the features were reused, not recomputed
  # Statistics of other weights are never compared with these samples' features.
  inception.save_state_dict(weights, random_state_dict(seed=1))
  with caplog.at_level(logging.WARNING):
    again = run_lib.evaluate(config, workdir, "eval_fid")["4"]
  assert "fid" not in again and "computed with other settings" in caplog.text
