"""One-file detector checkpoints: ``{"format", "detector", "config", "state", "meta"}``.

Written with ``torch.save`` to a temporary file in the target directory and moved into place
with ``os.replace`` (a crash never leaves a half-written checkpoint); read with
``torch.load(weights_only=True)`` so loading a file never runs code from it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import torch

from mvxray.io import atomic_torch_save

FORMAT = "mvxray.detector2d/1"

C = TypeVar("C")


def save_checkpoint(
    path: str | Path, detector: str, config: Any, state: Any, meta: dict[str, Any] | None = None
) -> Path:
    """Write a detector checkpoint atomically.

    Args:
        path: output file (parents are created).
        detector: the name in :data:`mvxray.detectors2d.DETECTORS`.
        config: the detector's frozen dataclass config.
        state: weights / calibration (tensors, dicts, lists, numbers, strings).
        meta: free provenance (training data, metrics, ...).
    """
    return atomic_torch_save(
        {
            "format": FORMAT,
            "detector": detector,
            "config": dataclasses.asdict(config),
            "state": state,
            "meta": dict(meta or {}),
        },
        path,
    )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an mvxray detector checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable mvxray detector checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path}: expected an mvxray detector checkpoint ({FORMAT}), found {found!r}"
        )
    return ckpt


def config_from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build a frozen dataclass config from a plain dict (lists become tuples).

    Raises:
        ValueError: a key is not a field of ``cls``.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Cfg:
        ...     sizes: tuple[int, ...] = (1, 2)
        >>> config_from_dict(Cfg, {"sizes": [3, 4]})
        Cfg(sizes=(3, 4))
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(values) - names
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown option(s) {sorted(unknown)}; valid: {sorted(names)}"
        )

    def tup(v: Any) -> Any:
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    return cls(**{k: tup(v) for k, v in values.items()})
