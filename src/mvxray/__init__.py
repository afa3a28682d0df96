"""mvxray: find and localize small 3D indications from several calibrated X-ray views.

The centre of the library is :mod:`mvxray.geometry`; every other sub-package is composed
against it. Frames, axes, units and pixel rules are written down once in ``docs/conventions.md``.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
