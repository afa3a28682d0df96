"""Lifting 2D detections in V calibrated views to 3D boxes in the CT frame.

Every lifter follows :class:`mvxray.lifting.base.Lifter`; pick one by name::

    from mvxray.lifting import build
    lifter = build("triangulation")            # training-free geometry
    lifted = lifter.lift(sample, detections)   # Lifted3D: boxes3d (M, 6) CT mm, scores, support

``LIFTERS`` maps a name to a factory taking the config fields as keyword arguments. Factories
import their module when called, so importing :mod:`mvxray.lifting` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mvxray.lifting.base import Lifted3D, Lifter, TrainableLifter


def _triangulation(**cfg: Any) -> Lifter:
    from mvxray.lifting.triangulation import TriangulationLifter

    return TriangulationLifter(**cfg)


def _voting(**cfg: Any) -> Lifter:
    from mvxray.lifting.voting import VotingLifter

    return VotingLifter(**cfg)


def _voting_fpr(**cfg: Any) -> Lifter:
    from mvxray.lifting.fpr import FPRVotingLifter

    return FPRVotingLifter(**cfg)


def _mv2d(**cfg: Any) -> Lifter:
    from mvxray.lifting.mv2d import MV2DLifter

    return MV2DLifter(**cfg)


def _rayemb(**cfg: Any) -> Lifter:
    from mvxray.lifting.rayemb.lifter import RayEmbLifter

    return RayEmbLifter(**cfg)


#: Name → factory of every lifter.
LIFTERS: dict[str, Callable[..., Lifter]] = {
    "triangulation": _triangulation,
    "voting": _voting,
    "voting_fpr": _voting_fpr,
    "mv2d": _mv2d,
    "rayemb": _rayemb,
}


def build(name: str, **cfg: Any) -> Lifter:
    """A lifter by name, configured by keyword arguments (its config's fields).

    Raises:
        KeyError: unknown name (the message lists the known ones).

    Example:
        >>> build("triangulation", gate_px=3.0).config.association.gate_px
        3.0
    """
    if name not in LIFTERS:
        raise KeyError(f"lifter {name!r}: unknown; expected one of {sorted(LIFTERS)}")
    return LIFTERS[name](**cfg)


#: Trainable lifters: name → (module, class) whose ``load(path)`` reads a saved lifter.
TRAINABLE: dict[str, tuple[str, str]] = {
    "voting_fpr": ("mvxray.lifting.fpr", "FPRVotingLifter"),
    "mv2d": ("mvxray.lifting.mv2d", "MV2DLifter"),
    "rayemb": ("mvxray.lifting.rayemb.lifter", "RayEmbLifter"),
}


def load(name: str, path: str | Path, **kwargs: Any) -> Lifter:
    """Read a trained lifter ``name`` saved at ``path`` (by its ``save``).

    Raises:
        KeyError: ``name`` is not a trainable lifter.
        FileNotFoundError: no file at ``path``.
    """
    if name not in TRAINABLE:
        raise KeyError(
            f"lifter {name!r}: nothing to load; trainable lifters are {sorted(TRAINABLE)}"
        )
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no saved {name} lifter there")
    module, cls = TRAINABLE[name]
    return getattr(importlib.import_module(module), cls).load(path, **kwargs)


__all__ = ["LIFTERS", "TRAINABLE", "Lifted3D", "Lifter", "TrainableLifter", "build", "load"]
