"""Named tables of interchangeable pieces: SDEs, models, predictors, correctors, ODE solvers,
sampling methods, data sources, ...

Every choice a config makes by name (``training.sde = 'vpsde'``, ``sampling.predictor =
'reverse_diffusion'``) is looked up in a :class:`Registry`. Names are case-insensitive, and an
unknown name raises a ``ValueError`` that lists the valid ones, so a typo on the command line is
answered in one line. A new piece plugs in by registering itself; nothing else changes::

  PREDICTORS = Registry("predictor")

  @PREDICTORS.register("euler_maruyama")
  class EulerMaruyamaPredictor(Predictor):
    ...

  PREDICTORS.get("Euler_Maruyama")  # -> EulerMaruyamaPredictor
"""

from __future__ import annotations

from typing import Callable, Dict, Generic, Iterator, Tuple, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """A case-insensitive ``name -> entry`` table for one kind of piece.

  Attributes:
    kind: what the entries are, as error messages name it (``'SDE'``, ``'predictor'``).
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: Dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator adding the decorated class or function under ``name``; returns it unchanged."""

    def decorator(entry: T) -> T:
      self.add(name, entry)
      return entry

    return decorator

  def add(self, name: str, entry: T) -> None:
    """Adds ``entry`` under ``name``.

    Raises:
      ValueError: if the name (in any case) is taken.
    """
    key = name.lower()
    if key in self._entries:
      raise ValueError(f"A {self.kind} named {name!r} is already registered.")
    self._entries[key] = entry

  def get(self, name: str) -> T:
    """The entry registered as ``name`` (any case).

    Raises:
      ValueError: naming the unknown ``name`` and listing the valid names.
    """
    key = str(name).lower()
    if key not in self._entries:
      raise ValueError(f"Unknown {self.kind} {name!r}; valid names are: "
                       f"{', '.join(self.names())}.")
    return self._entries[key]

  def names(self) -> Tuple[str, ...]:
    """The registered names, lower-cased and sorted."""
    return tuple(sorted(self._entries))

  def items(self) -> Iterator[Tuple[str, T]]:
    """``(name, entry)`` pairs in sorted name order."""
    return ((name, self._entries[name]) for name in self.names())

  def __contains__(self, name: object) -> bool:
    return str(name).lower() in self._entries

  def __repr__(self) -> str:
    return f"Registry({self.kind!r}: {', '.join(self.names())})"
