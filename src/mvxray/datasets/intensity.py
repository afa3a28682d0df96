"""X-ray intensities: raw detector counts (transmission) → line integrals.

mvxray's views are line integrals of the attenuation (``-log(I / I0)``: bright where the object
attenuates, 0 in air), in any affine scale: every detector normalizes each view on its own. Raw
counts are not an affine change of that — the object is dark, and the scale is exponential — so
they are converted once, here (on reading a case whose ``case.json`` says ``"intensity":
"transmission"``, or by hand before detection).
"""

from __future__ import annotations

import torch

#: Values of ``case.json``'s optional ``intensity`` key.
INTENSITIES = ("line_integral", "transmission")


def line_integral_from_transmission(
    images: torch.Tensor, i0: float | None = None, floor: float = 1e-6
) -> torch.Tensor:
    """``-log(I / I0)`` of transmission images ``(..., H, W)``: Beer–Lambert inverted.

    Args:
        images: detector counts (or any intensity proportional to the transmitted beam), ≥ 0.
        i0: the unattenuated intensity; ``None``: each image's maximum, so the brightest pixel
            becomes 0 (a view without air in its field is then offset by a constant, which the
            detectors' per-image normalization absorbs).
        floor: counts below ``floor · I0`` (dark-corrected zeros) are read as ``floor · I0``.

    Returns:
        Line integrals, same shape and floating dtype.

    Raises:
        ValueError: a negative count, or ``i0`` / an image's maximum not > 0.

    Example:
        >>> counts = 1000.0 * torch.exp(-torch.tensor([[0.5, 1.0], [2.0, 0.25]]))
        >>> line_integral_from_transmission(counts, i0=1000.0).round(decimals=4).tolist()
        [[0.5, 1.0], [2.0, 0.25]]
    """
    x = images if images.is_floating_point() else images.double()
    if bool((x < 0).any()):
        raise ValueError(
            f"transmission images: expected counts >= 0, found a minimum of {x.min().item():g} "
            "(already log-converted? then they are line integrals)"
        )
    ref = x.amax(dim=(-2, -1), keepdim=True) if i0 is None else x.new_tensor(float(i0))
    if bool((ref <= 0).any()):
        raise ValueError(f"transmission images: i0 must be > 0, found {ref.min().item():g}")
    return -torch.log((x / ref).clamp(min=floor))
