"""Where mvxray keeps its cache (rendered demo data, trained models, ultralytics settings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The cache root: ``$MVXRAY_CACHE`` if set, else ``~/.cache/mvxray``. Created on demand."""
    root = Path(os.environ.get("MVXRAY_CACHE", Path.home() / ".cache" / "mvxray")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def assets_dir() -> Path:
    """Files shipped inside the package (e.g. the demo detector's weights)."""
    return Path(__file__).resolve().parent / "assets"
