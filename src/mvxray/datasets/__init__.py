"""mvxray.datasets: CT in (DICOM, NIfTI, LIDC-IDRI), phantoms, rendering to calibrated
multi-view X-rays, the on-disk dataset format, the torch Dataset and augmentation.

The public names below are loaded lazily (PEP 562), so ``import mvxray.datasets.base`` — the
interface siblings use — does not pull in the renderers, kornia or pydicom.

Example:
    >>> import mvxray.datasets as D
    >>> D.read_case.__module__
    'mvxray.datasets.format'
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # base
    "Volume": "base",
    "MultiViewSample": "base",
    # rendering
    "BACKENDS": "render",
    "MU_WATER": "render",
    "RenderedCase": "render",
    "hu_to_mu": "render",
    "mask_boxes": "render",
    "render_case": "render",
    "render_masks": "render",
    "render_views": "render",
    # on-disk format
    "DatasetFormatError": "format",
    "DatasetIndex": "format",
    "read_case": "format",
    "read_dataset": "format",
    "split_cases": "format",
    "write_case": "format",
    "write_dataset": "format",
    "INTENSITIES": "intensity",
    "line_integral_from_transmission": "intensity",
    # torch
    "MultiViewBatch": "torchdata",
    "MultiViewDataset": "torchdata",
    "collate": "torchdata",
    # augmentation
    "GeometricConfig": "augment",
    "MultiViewAugment": "augment",
    "Photometric": "augment",
    "PhotometricConfig": "augment",
    # generation
    "GenerateConfig": "generate",
    "case_seed": "generate",
    "generate_dataset": "generate:generate",  # the module is mvxray.datasets.generate
    # CT in and phantoms (the phantoms engineer's modules)
    "load_ct": "ct",
    "load_dicom": "ct",
    "load_nifti": "ct",
    "CLASSES": "phantoms",
    "PHANTOMS": "phantoms",
    "PhantomCase": "phantoms",
    "insert_nodules": "phantoms",
    "make_casting_case": "phantoms",
    "make_chest_case": "phantoms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mvxray.datasets' has no attribute {name!r}")
    module_name, _, attr = _EXPORTS[name].partition(":")
    module = importlib.import_module(f"mvxray.datasets.{module_name}")
    value = getattr(module, attr or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
