"""``python -m inception --convert PTH --out NPZ``: pytorch-fid's FID Inception weights (a torch
``.pth``) as an ``.npz`` that loads without torch; :mod:`evaluation.inception` is the network."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from evaluation import inception


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Converts the weights; returns the path written."""

  def fail(message):
    raise ValueError(message)

  parser = argparse.ArgumentParser(prog=inception.COMMAND, allow_abbrev=False,
                                   description="Converts pytorch-fid's FID Inception weights "
                                   "(.pth, needs torch) to an .npz that loads without torch.")
  parser.error = fail
  parser.add_argument("--convert", required=True, metavar="PTH",
                      help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
  parser.add_argument("--out", required=True, metavar="NPZ", help="the .npz to write")
  args = parser.parse_args(argv)
  if not args.out.endswith(".npz"):
    raise ValueError(f"--out must name an .npz file, got {args.out!r}")
  inception.save_state_dict(args.out, inception.read_state_dict(args.convert))
  return args.out


def run() -> None:
  """The command: the written path, or a user error as one line and a non-zero exit."""
  try:
    print(f"wrote {main()}")
  except (ValueError, OSError, ImportError) as e:
    sys.exit(f"error: {' '.join(str(e).split())}")


if __name__ == "__main__":
  run()
