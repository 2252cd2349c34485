"""``datasets.readers``, the numpy-only readers: IDX (real MNIST and Fashion-MNIST, files written
here, corrupt ones), CIFAR-10 python batches, npz, and image folders (PNG and JPEG files written
here: formats, sizes, modes, held-out splits, class folders, bad folders), each crop and resize
being ``readers.fit_images``.

Few distinct image sizes are used: the resize compiles once per distinct square side.
"""

import hashlib
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

import datasets
from datasets import readers
from tests.datasets.data_files import (FASHION_DIR, MNIST_DIR, MNIST_TEST_COUNTS,
                                       MNIST_TRAIN_COUNTS, collect, make_config, needs_mnist,
                                       write_idx)
from tests.image_folders import one_line, random_pixels, write_flat_folder, write_image


# ------------------------------------------------------------------------------------------------
# IDX.


@needs_mnist
def test_idx_real_mnist_shapes_and_class_counts():
  for split, counts in (("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)):
    data = readers.load_idx(MNIST_DIR, split)
    n = sum(counts)
    assert data.images.shape == (n, 28, 28, 1) and data.images.dtype == np.uint8
    assert data.labels.shape == (n,) and data.labels.dtype == np.int32
    assert np.bincount(data.labels, minlength=10).tolist() == counts
    assert data.images.min() == 0 and data.images.max() == 255
  # The published md5 of the decompressed test-image IDX, recomputed from what we read.
  header = bytes([0, 0, 8, 3]) + np.asarray([10000, 28, 28], ">u4").tobytes()
  images = readers.load_idx(MNIST_DIR, "test").images
  assert hashlib.md5(header + images.tobytes()).hexdigest() == "2646ac647ad5339dbf082846283269ea"


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason=f"Fashion-MNIST not found in {FASHION_DIR}")
def test_idx_real_fashion_mnist_class_counts():
  data = readers.load_idx(FASHION_DIR, "test", "fashion_mnist")
  assert data.images.shape == (10000, 28, 28, 1)
  assert np.bincount(data.labels).tolist() == [1000] * 10
  train_labels = readers.read_idx(os.path.join(FASHION_DIR, "train-labels-idx1-ubyte.gz"))
  assert np.bincount(train_labels).tolist() == [6000] * 10


@needs_mnist
def test_idx_eval_pass_over_real_mnist_test_split():
  config = make_config(data_dir=MNIST_DIR)
  batches = datasets.get_dataset(config, split="test", batch_size=4096, train=False)
  assert batches.num_batches == 3 and len(batches) == 3 and batches.num_examples == 10000
  got = collect(batches)
  labels = np.concatenate([b["label"][b["mask"] > 0] for b in got])
  assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
  assert all(b["image"].shape == (4096, 28, 28, 1) and b["image"].dtype == np.float32 for b in got)
  assert got[-1]["mask"].sum() == 10000 - 2 * 4096
  assert datasets.num_examples(config, "train") == 60000


@pytest.mark.parametrize("gz", [True, False])
def test_idx_reader_round_trip_and_errors(tmp_path, gz):
  ext = ".gz" if gz else ""
  images = np.random.default_rng(1).integers(0, 256, (6, 28, 28), dtype=np.uint8)
  write_idx(str(tmp_path / f"train-images-idx3-ubyte{ext}"), images)
  write_idx(str(tmp_path / f"train-labels-idx1-ubyte{ext}"), np.arange(6) % 10)
  data = readers.load_idx(str(tmp_path), "train")
  assert np.array_equal(data.images[..., 0], images) and data.labels.tolist() == [0, 1, 2, 3, 4, 5]

  bad = str(tmp_path / f"bad{ext}")
  write_idx(bad, images, magic=bytes([0, 0, 9, 3]))  # 0x09: int8, not uint8
  with pytest.raises(ValueError, match="bad magic number"):
    readers.read_idx(bad)
  write_idx(bad, images, cut=5)
  with pytest.raises(ValueError, match="truncated"):
    readers.read_idx(bad)
  write_idx(bad, images, extra=b"\0")  # more data than the header promises
  with pytest.raises(ValueError, match=os.path.basename(bad) + ".*promises"):
    readers.read_idx(bad)

  with pytest.raises(FileNotFoundError,
                     match=r"t10k-images-idx3-ubyte\.gz.*config\.data\.data_dir"):
    readers.load_idx(str(tmp_path), "test")
  write_idx(str(tmp_path / f"t10k-images-idx3-ubyte{ext}"), images)
  write_idx(str(tmp_path / f"t10k-labels-idx1-ubyte{ext}"), np.arange(5))
  with pytest.raises(ValueError, match="6 images but 5 labels"):
    readers.load_idx(str(tmp_path), "test")


def test_truncated_gzip_is_a_clear_error(tmp_path):
  path = str(tmp_path / "x-images-idx3-ubyte.gz")
  write_idx(path, np.random.default_rng(2).integers(0, 256, (50, 28, 28), dtype=np.uint8))
  raw = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(raw[:len(raw) // 2])
  with pytest.raises(ValueError, match="corrupt or truncated"):
    readers.read_idx(path)


# ------------------------------------------------------------------------------------------------
# CIFAR-10 python batches and npz.


def write_cifar(root, sizes):
  """Writes synthetic CIFAR-10 batches in the official format (protocol-2 pickles, bytes keys)."""
  folder = os.path.join(root, "cifar-10-batches-py")
  os.makedirs(folder)
  rng = np.random.default_rng(4)
  truth = {}
  for name, n in sizes.items():
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    with open(os.path.join(folder, name), "wb") as f:
      pickle.dump(batch, f, protocol=2)
    truth[name] = (data, labels)
  archive = os.path.join(root, "cifar-10-python.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname="cifar-10-batches-py")
  return folder, archive, truth


def test_cifar_python_reader(tmp_path):
  sizes = {f"data_batch_{i}": i + 1 for i in range(1, 6)}
  sizes["test_batch"] = 3
  folder, archive, truth = write_cifar(str(tmp_path / "src"), sizes)
  os.makedirs(tmp_path / "tar_only")
  os.rename(archive, tmp_path / "tar_only" / "cifar-10-python.tar.gz")
  archive = str(tmp_path / "tar_only" / "cifar-10-python.tar.gz")
  train_names = [f"data_batch_{i}" for i in range(1, 6)]
  for split, names in (("train", train_names), ("test", ["test_batch"])):
    data_rows = np.concatenate([truth[m][0] for m in names])
    labels = sum((truth[m][1] for m in names), [])
    for where in (folder, str(tmp_path / "src"), archive, str(tmp_path / "tar_only")):
      got = readers.load_cifar_python(where, split)
      assert got.images.shape == (len(labels), 32, 32, 3) and got.images.dtype == np.uint8
      assert got.labels.tolist() == labels
      # Row layout: 1024 red, 1024 green, 1024 blue values, each a row-major 32 x 32 plane.
      for ch in range(3):
        assert np.array_equal(got.images[:, 5, 7, ch], data_rows[:, ch * 1024 + 5 * 32 + 7])
  config = make_config("cifar10", "cifar_python", folder, image_size=32, num_channels=3,
                       random_flip=True)
  batch = next(iter(datasets.get_dataset(config, split="train", batch_size=5, train=True)))
  assert batch["image"].shape == (5, 32, 32, 3)
  config.data.num_channels = 1
  with pytest.raises(ValueError, match="3 channel"):
    datasets.get_dataset(config, split="train", batch_size=5, train=True)
  with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
    readers.load_cifar_python(str(tmp_path), "test")


class _Hostile:
  def __reduce__(self):
    return (os.getcwd, ())


def test_cifar_reader_refuses_arbitrary_pickles(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  os.makedirs(folder)
  with open(folder / "test_batch", "wb") as f:
    pickle.dump({b"data": _Hostile(), b"labels": []}, f, protocol=2)
  with pytest.raises(ValueError, match="refusing to unpickle"):
    readers.load_cifar_python(str(folder), "test")


def test_npz_reader(tmp_path):
  rng = np.random.default_rng(6)
  gray = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
  np.savez(tmp_path / "gray.npz", train=gray, train_labels=np.arange(5), test=gray[:2])
  got = readers.load_npz(str(tmp_path / "gray.npz"), "train")
  assert got.images.shape == (5, 8, 8, 1) and np.array_equal(got.images[..., 0], gray)
  assert got.labels.tolist() == [0, 1, 2, 3, 4]
  assert readers.load_npz(str(tmp_path / "gray.npz"), "test").labels.tolist() == [-1, -1]

  color = rng.integers(0, 256, (4, 6, 6, 3), dtype=np.uint8)
  np.savez(tmp_path / "mine.npz", x_train=color, y_train=np.arange(4), x_test=color,
           y_test=np.arange(4))
  # data_dir is the folder, holding <dataset>.npz.
  config = make_config("mine", "npz", str(tmp_path), image_size=6, num_channels=3)
  batches = datasets.get_dataset(config, split="test", batch_size=3, train=False)
  got = collect(batches)
  assert np.array_equal(np.rint(got[0]["image"] * 255).astype(np.uint8), color[:3])

  np.savez(tmp_path / "bad.npz", images=gray)
  with pytest.raises(ValueError, match=r"expected key train or x_train.*found \['images'\]"):
    readers.load_npz(str(tmp_path / "bad.npz"), "train")
  np.savez(tmp_path / "float.npz", train=gray.astype(np.float32))
  with pytest.raises(ValueError, match="expected uint8"):
    readers.load_npz(str(tmp_path / "float.npz"), "train")
  with pytest.raises(FileNotFoundError, match="npz file"):
    readers.load_npz(str(tmp_path / "absent.npz"), "train")


def test_npz_crop_and_resize(tmp_path):
  rng = np.random.default_rng(8)
  wide = rng.integers(0, 256, (3, 10, 16, 1), dtype=np.uint8)
  np.savez(tmp_path / "wide.npz", test=wide)
  config = make_config("wide", "npz", str(tmp_path / "wide.npz"), image_size=10, num_channels=1)
  got = datasets.load_split(config, "test")
  assert np.array_equal(got.images, wide[:, :, 3:13])  # the central square
  flat = np.full((2, 16, 16, 3), 77, np.uint8)
  flat[1] = 200
  np.savez(tmp_path / "flat.npz", test=flat)
  config = make_config("flat", "npz", str(tmp_path / "flat.npz"), image_size=8, num_channels=3)
  got = datasets.load_split(config, "test")
  assert got.images.shape == (2, 8, 8, 3) and got.images.dtype == np.uint8
  assert np.all(got.images[0] == 77) and np.all(got.images[1] == 200)


# ------------------------------------------------------------------------------------------------
# Image folders.


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
