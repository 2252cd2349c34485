"""Where data come from when ``config.data.data_dir`` is empty.

``datasets`` asks :func:`locate` when the config names no folder for a data set this project
knows how to obtain: MNIST, Fashion-MNIST and CIFAR-10 (sources ``'idx'``, ``'cifar_python'`` or
``'tfds'``) and the other TFDS-served ones (source ``'tfds'``). Sources reading a user's own files
(npz, TFRecords, a folder) still need ``config.data.data_dir``. The places, in order; the first
that has the data wins:

1. ``$SCORE_SDE_DATA_DIR``, a data root: the numpy readers' files in ``<root>/<dataset>``, else
   directly in ``<root>`` (the four IDX ``.gz`` files of MNIST / Fashion-MNIST; the CIFAR-10
   python batches, extracted or as ``cifar-10-python.tar.gz``), read with numpy alone. Only for
   data sets the numpy readers read. Files directly in the root are taken for whichever of those
   data sets is asked for, so a root serving several needs one subfolder each.
2. TFDS's prepared data in ``$TFDS_DATA_DIR``, else in TFDS's default ``~/tensorflow_datasets``:
   ``<dir>/<tfds name>/<version>/dataset_info.json`` is looked for on disk first, and TensorFlow
   is imported only when it is there, to check the version and read it (``tf_readers``).
3. A download: when the host TFDS downloads the data set from (or the proxy of ``$https_proxy``
   / ``$http_proxy`` for it) accepts a TCP connection within :data:`PROBE_TIMEOUT_S`, TFDS
   downloads and prepares it into the folder of step 2. The probe comes first so that an
   offline machine is answered in seconds, not after minutes of TFDS's download retries.
4. Otherwise :class:`DataNotFoundError`: one line saying what was looked at and every way to
   provide the data.

Steps 2 and 3 need TensorFlow and TensorFlow Datasets; where they are not installed both are
skipped and the error says so. The place found decides the source: asked for ``'idx'``, MNIST
found prepared by TFDS is read as ``'tfds'`` (whose stored order differs from the IDX files').
A data set is located once per process and logged in one line naming where it came from; a
failed lookup is repeated at the next call.

Environment variables:

* ``SCORE_SDE_DATA_DIR``: the data root of step 1.
* ``TFDS_DATA_DIR``: TFDS's data folder (steps 2 and 3), as TFDS itself reads it.
* ``SCORE_SDE_DOWNLOAD_PROBE=host:port``: probe this address instead of the download host (tests
  point it at a closed local port to act offline). In-process, tests replace
  :func:`network_reachable` instead.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import logging
import os
import re
import socket
import threading
import urllib.parse
import urllib.request
from typing import List, NamedTuple, Tuple

from datasets import tf_readers

ENV_DATA_DIR = "SCORE_SDE_DATA_DIR"
ENV_TFDS_DATA_DIR = "TFDS_DATA_DIR"
ENV_PROBE = "SCORE_SDE_DOWNLOAD_PROBE"
PROBE_TIMEOUT_S = 3.0

# The numpy sources this lookup serves (step 1), with what their files are called in messages.
NUMPY_SOURCES = ("idx", "cifar_python")
_NUMPY_FILES = {"idx": "IDX files", "cifar_python": "python batches"}


class DataNotFoundError(ValueError):
  """No place holds the data and none could download it; the message names every way."""


class Location(NamedTuple):
  """Where a data set was found.

  Attributes:
    source: the ``config.data.source`` that reads it there (``'idx'``, ``'cifar_python'``,
      ``'tfds'``).
    path: the folder that source reads (for ``'tfds'``: TFDS's data folder).
  """
  source: str
  path: str


class _Known(NamedTuple):
  """A data set as messages describe it."""
  title: str
  url: str                          # where its official files are, and TFDS downloads them from
  files: Tuple[str, ...] = ()       # the official files the numpy reader takes
  tfds_files: Tuple[str, ...] = ()  # those TFDS prepares from offline (its manual_dir)


_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
_KNOWN = {
    "mnist": _Known("MNIST", "https://storage.googleapis.com/cvdf-datasets/mnist/", _IDX_FILES,
                    _IDX_FILES),
    "fashion_mnist": _Known("Fashion-MNIST",
                            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                            _IDX_FILES, _IDX_FILES),
    "cifar10": _Known("CIFAR-10", "https://www.cs.toronto.edu/~kriz/",
                      ("cifar-10-python.tar.gz",), ("cifar-10-binary.tar.gz",)),
    "svhn": _Known("SVHN", "http://ufldl.stanford.edu/housenumbers/"),
    "celeba": _Known("CelebA", "https://drive.google.com/"),
}
_LSUN_URL = "http://dl.yf.io/lsun/"
# TFDS's bucket of prepared data sets, which it asks first.
_TFDS_BUCKET_URL = "https://storage.googleapis.com/tfds-data/"


def _known(dataset: str) -> _Known:
  if dataset in _KNOWN:
    return _KNOWN[dataset]
  return _Known(dataset, _LSUN_URL if dataset.startswith("lsun/") else _TFDS_BUCKET_URL)


# ------------------------------------------------------------------------------------------------
# The network probe.


def network_reachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
  """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds.

  Args:
    host: a name or address.
    port: the TCP port.
    timeout: the bound on the whole probe, name resolution included (a resolver that never
      answers must not stall an offline machine, and a socket's timeout does not cover it).

  Returns:
    True if the connection was made in time.
  """
  answered = []

  def connect() -> None:
    try:
      socket.create_connection((host, port), timeout=timeout).close()
      answered.append(True)
    except OSError:
      answered.append(False)

  thread = threading.Thread(target=connect, name="download-probe", daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(answered and answered[0])


def _probe_address(url: str) -> Tuple[str, int]:
  """The ``(host, port)`` a download of ``url`` connects to first: ``$SCORE_SDE_DOWNLOAD_PROBE``,
  else the proxy for its scheme, else its own host."""
  override = os.environ.get(ENV_PROBE, "")
  if override:
    host, _, port = override.rpartition(":")
    if not host or not port.isdigit():
      raise ValueError(f"{ENV_PROBE}={override!r} is not host:port: set it like 127.0.0.1:9, or "
                       f"unset it to probe the download host.")
    return host.strip("[]"), int(port)
  parts = urllib.parse.urlsplit(url)
  proxy = urllib.request.getproxies().get(parts.scheme, "")
  if proxy and not urllib.request.proxy_bypass(parts.hostname):
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
  return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


# ------------------------------------------------------------------------------------------------
# What each place holds, from the file system alone.


def _has_idx(folder: str) -> bool:
  """All four IDX files of MNIST's layout in ``folder``, spelled as ``readers.load_idx`` reads."""
  return all(
      any(os.path.isfile(os.path.join(folder, f"{prefix}-{kind}{sep}idx{nd}-ubyte{ext}"))
          for sep in "-." for ext in (".gz", ""))
      for prefix in ("train", "t10k") for kind, nd in (("images", 3), ("labels", 1)))


def _has_cifar_python(folder: str) -> bool:
  """CIFAR-10 python batches in ``folder`` in a layout ``readers.load_cifar_python`` reads."""
  return any(os.path.isfile(os.path.join(folder, *p)) for p in (
      ("data_batch_1",), ("cifar-10-batches-py", "data_batch_1"), ("cifar-10-python.tar.gz",)))


_HAS_FILES = {"idx": _has_idx, "cifar_python": _has_cifar_python}


def _tfds_data_dir() -> Tuple[str, str]:
  """TFDS's data folder and how it was chosen (as TFDS chooses it)."""
  data_dir = os.environ.get(ENV_TFDS_DATA_DIR, "")
  if data_dir:
    return data_dir, f"${ENV_TFDS_DATA_DIR}"
  return os.path.join(os.path.expanduser("~"), "tensorflow_datasets"), "TFDS's default data dir"


def _prepared_versions(data_dir: str, tfds_name: str) -> List[str]:
  """Versions of ``tfds_name`` TFDS has prepared in ``data_dir`` (found on disk, no TFDS)."""
  infos = glob.glob(os.path.join(glob.escape(data_dir), tfds_name, "*", "dataset_info.json"))
  versions = (os.path.basename(os.path.dirname(p)) for p in infos)
  return sorted(v for v in versions if re.fullmatch(r"\d+\.\d+\.\d+", v))


def _tfds_installed() -> bool:
  """Whether TensorFlow and TFDS can be imported, asked without importing them."""
  try:
    return all(importlib.util.find_spec(m) is not None
               for m in ("tensorflow", "tensorflow_datasets"))
  except (ImportError, ValueError):
    return False


def _first_line(error: Exception) -> str:
  return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"


# ------------------------------------------------------------------------------------------------
# The lookup.


def locate(dataset: str, source: str, tfds_name: str, numpy_source: str) -> Location:
  """Finds (or downloads) a data set the config names no folder for, in the module's order.

  Args:
    dataset: the lower-cased ``config.data.dataset`` (``'lsun/<category>'`` for LSUN).
    source: the ``config.data.source`` asked for (messages name the flags to set for it).
    tfds_name: its TFDS builder; empty where TFDS does not serve it.
    numpy_source: the one of :data:`NUMPY_SOURCES` that reads it; empty where none does.

  Returns:
    the :class:`Location`; the first lookup of a data set in a process logs where it came from.

  Raises:
    DataNotFoundError: in one line, where no place has the data and nothing could be downloaded.
    ValueError: ``$SCORE_SDE_DOWNLOAD_PROBE`` is not ``host:port``.
  """
  tfds_dir, tfds_dir_origin = _tfds_data_dir()
  probe = _probe_address(_known(dataset).url) if tfds_name else ("", 0)
  return _locate(dataset, source, tfds_name, numpy_source, os.environ.get(ENV_DATA_DIR, ""),
                 tfds_dir, tfds_dir_origin, probe)


@functools.lru_cache(maxsize=None)
def _locate(dataset: str, source: str, tfds_name: str, numpy_source: str, root: str,
            tfds_dir: str, tfds_dir_origin: str, probe: Tuple[str, int]) -> Location:
  """:func:`locate` for given settings, remembered per process (exceptions are not)."""
  known = _known(dataset)
  missed: List[str] = []  # why each place did not serve, for the error

  if numpy_source:
    if root:
      for folder in (os.path.join(root, dataset), root):
        if _HAS_FILES[numpy_source](folder):
          logging.info("%s: %s in %s (from $%s)", known.title, _NUMPY_FILES[numpy_source], folder,
                       ENV_DATA_DIR)
          return Location(numpy_source, folder)
      missed.append(f"${ENV_DATA_DIR}={root} has no {known.title} {_NUMPY_FILES[numpy_source]} "
                    f"(looked in {os.path.join(root, dataset)} and {root})")
    else:
      missed.append(f"${ENV_DATA_DIR} is unset")

  if tfds_name:
    where = f"{tfds_dir} ({tfds_dir_origin})"
    if not _tfds_installed():
      missed.append(f"TensorFlow Datasets is not installed, so neither prepared TFDS data in "
                    f"{where} nor a download was tried (pip install tensorflow-cpu "
                    f"tensorflow-datasets)")
    elif _tfds_prepared(tfds_name, tfds_dir, where, missed):
      logging.info("%s: TFDS's prepared %s in %s (from %s)", known.title, tfds_name, tfds_dir,
                   tfds_dir_origin)
      return Location("tfds", tfds_dir)
    elif network_reachable(*probe, PROBE_TIMEOUT_S):
      logging.info("%s: not found locally; TFDS downloads and prepares %s into %s (%s)",
                   known.title, tfds_name, tfds_dir, tfds_dir_origin)
      try:
        tf_readers.prepare_tfds(tfds_name, tfds_dir)
      except Exception as e:  # noqa: BLE001 -- any download failure gets the same advice
        missed.append(f"TFDS's download of {tfds_name} into {tfds_dir} failed ({_first_line(e)})")
      else:
        return Location("tfds", tfds_dir)
    else:
      missed.append(f"{probe[0]}:{probe[1]} could not be reached within {PROBE_TIMEOUT_S:g} s "
                    f"(offline?), so nothing was downloaded")

  ways = _ways(dataset, source, known, tfds_name, numpy_source)
  raise DataNotFoundError(f"No {known.title} data found: {'; '.join(missed)}. Provide it in one "
                          f"of these ways: {'; or '.join(ways)}.")


def _tfds_prepared(tfds_name: str, tfds_dir: str, where: str, missed: List[str]) -> bool:
  """Whether TFDS's prepared ``tfds_name`` is in ``tfds_dir``; if not, appends why to ``missed``.

  TensorFlow is imported only when the disk holds a prepared version (or the folder is remote).
  """
  remote = "://" in tfds_dir  # e.g. gs://: only TFDS can look there
  versions = [] if remote else _prepared_versions(tfds_dir, tfds_name)
  if versions or remote:
    try:
      if tf_readers.tfds_is_prepared(tfds_name, tfds_dir):
        return True
    except Exception as e:  # noqa: BLE001 -- any TFDS failure means: not readable there
      missed.append(f"TFDS cannot read {tfds_name} in {where} ({_first_line(e)})")
      return False
  if versions:
    missed.append(f"{where} holds {tfds_name} {', '.join(versions)}, not the version this TFDS "
                  f"reads")
  else:
    missed.append(f"no prepared TFDS {tfds_name} in {where}")
  return False


def _ways(dataset: str, source: str, known: _Known, tfds_name: str,
          numpy_source: str) -> List[str]:
  """Every way to provide the data set, as flags and environment variables to set."""
  ways = []
  if numpy_source:
    select = "" if source == numpy_source else f"--config.data.source={numpy_source} "
    ways.append(f"download {', '.join(known.files)} from {known.url} into a folder and pass "
                f"{select}--config.data.data_dir=<folder>")
    ways.append(f"set {ENV_DATA_DIR}=<root> with those files in <root>/{dataset}")
  if tfds_name:
    select = "" if source == "tfds" else "--config.data.source=tfds "
    offline = ""
    if known.tfds_files:
      files = ("those files" if known.tfds_files == known.files
               else ", ".join(known.tfds_files))
      offline = (f" (prepared offline by tf_readers.prepare_tfds({tfds_name!r}, <dir>, "
                 f"manual_dir=<a folder with {files}>))")
    ways.append(f"set {ENV_TFDS_DATA_DIR}=<dir> (or pass {select}--config.data.data_dir=<dir>) "
                f"for a folder holding TFDS's prepared {tfds_name}{offline}")
    ways.append(f"go online so that TFDS can download it from {known.url}")
  return ways
