"""Per-image intensity normalization shared by every 2D detector.

A user's X-rays will not be our renders: line integrals in any unit, 12-bit or 8-bit, on any
offset (raw transmission counts are not such a scale: they are log-converted on reading,
:mod:`mvxray.datasets.intensity`). Every detector therefore sees its input
through :func:`robust_normalize` (per image: the 0.5th / 99.5th percentiles map to 0 / 1) and,
for the learned ones, through :func:`xray_channels`, which adds two background-subtracted
channels that make small, faint blobs stand out from the smooth anatomy.

Filter widths are fractions of the image height, so a rig with the same field of view at a
higher resolution gets the same filters in millimetres.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from kornia.filters import gaussian_blur2d

from mvxray.geometry._checks import ShapeError

#: Percentiles (in [0, 1]) mapped to 0 and 1 by :func:`robust_normalize`.
LOW_Q, HIGH_Q = 0.005, 0.995
#: Above this many pixels the percentiles are estimated on a strided subsample.
_MAX_QUANTILE_NUMEL = 1 << 18


def check_images(images: torch.Tensor, channels: int | None = 1, name: str = "images") -> None:
    """Raise a clear error unless ``images`` is a floating ``(V, C, H, W)`` tensor.

    Args:
        images: the tensor to check.
        channels: required C, or ``None`` for any.
        name: argument name used in the message.

    Raises:
        ShapeError: wrong rank or channel count.
        TypeError: not a floating-point tensor.
    """
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor (V, C, H, W), found {type(images).__name__}"
        )
    if images.dim() != 4:
        raise ShapeError(f"{name}: expected shape (V, C, H, W), found {tuple(images.shape)}")
    if channels is not None and images.shape[1] != channels:
        raise ShapeError(
            f"{name}: expected {channels} channel(s) (V, {channels}, H, W), found {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, found {images.dtype}")


def _quantiles(flat: torch.Tensor, qs: tuple[float, float]) -> torch.Tensor:
    """``(B, N)`` → ``(2, B)`` quantiles (subsampled for large N: torch.quantile has a size cap)."""
    if flat.shape[1] > _MAX_QUANTILE_NUMEL:
        step = math.ceil(flat.shape[1] / _MAX_QUANTILE_NUMEL)
        flat = flat[:, ::step]
    q = torch.tensor(qs, dtype=flat.dtype, device=flat.device)
    return torch.quantile(flat, q, dim=1)


def _flat_tolerance(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Percentile spans below this are rounding noise of the dtype: the view is flat."""
    eps = torch.finfo(lo.dtype).eps
    return 8 * eps * torch.maximum(hi.abs(), lo.abs()).clamp_min(1e-30)


def robust_normalize(images: torch.Tensor, clip: tuple[float, float] = (-0.5, 1.5)) -> torch.Tensor:
    """Map each image's 0.5th / 99.5th intensity percentiles to 0 / 1 (float32).

    Invariant to any positive affine change of intensities; a flat image becomes all zeros.

    Args:
        images: ``(V, C, H, W)`` any intensity scale.
        clip: output range after normalization (outliers beyond the percentiles are clipped).

    Returns:
        ``(V, C, H, W)`` float32.

    Example:
        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
        >>> y = robust_normalize(1000 * x + 7)
        >>> torch.allclose(y, robust_normalize(x)), float(y.min()) < 0.01 < 0.99 < float(y.max())
        (True, True)
        >>> float(robust_normalize(torch.full((1, 1, 8, 8), 3.0)).abs().max())
        0.0
    """
    check_images(images, channels=None)
    # In the input's precision (float64 keeps a small signal on a large offset), float32 out.
    x = images if images.dtype == torch.float64 else images.float()
    V, C, H, W = x.shape
    flat = x.reshape(V * C, H * W)
    lo, hi = _quantiles(flat, (LOW_Q, HIGH_Q))
    span = hi - lo
    # A flat image has no contrast: scale by 1 so it maps to 0 instead of dividing by ~0.
    tiny = _flat_tolerance(lo, hi)
    span = torch.where(span > tiny, span, torch.ones_like(span))
    y = (flat - lo[:, None]) / span[:, None]
    return y.clamp(*clip).reshape(V, C, H, W).float()


def has_contrast(images: torch.Tensor) -> torch.Tensor:
    """``(V,)`` bool: the view's 0.5th and 99.5th percentiles differ (a flat view carries no
    information, so detectors return nothing for it instead of their untrained biases).

    Example:
        >>> has_contrast(torch.stack([torch.zeros(1, 8, 8), torch.rand(1, 8, 8)])).tolist()
        [False, True]
    """
    check_images(images, channels=None)
    x = images if images.dtype == torch.float64 else images.float()
    lo, hi = _quantiles(x.flatten(1), (LOW_Q, HIGH_Q))
    return (hi - lo) > _flat_tolerance(lo, hi)


def _blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    k = 2 * math.ceil(3.0 * sigma_px) + 1
    return gaussian_blur2d(x, (k, k), (sigma_px, sigma_px), border_type="reflect")


#: Normalized intensity above which a pixel is the object, not the air around it.
OBJECT_LEVEL = 0.05


def _robust_scale(x: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """Per-image spread (1.4826 · median absolute deviation) over the object's pixels ``obj``
    (all pixels when the object covers < 1 % of the image), ``(B,)`` for ``(B, 1, H, W)``.

    Over the whole image, the air around the object (flat, so deviation 0) would shrink the
    spread as the field of view widens — a rig with half the view in air showed the detector
    twice-amplified, tanh-saturated filters (2D recall 0.21 instead of 0.33 on the same cases).
    ``torch.nanmedian`` skips the air.
    """
    flat, keep = x.flatten(1), obj.flatten(1)
    if flat.shape[1] > _MAX_QUANTILE_NUMEL:
        step = math.ceil(flat.shape[1] / _MAX_QUANTILE_NUMEL)
        flat, keep = flat[:, ::step], keep[:, ::step]
    keep = keep | (keep.float().mean(1, keepdim=True) < 0.01)
    flat = torch.where(keep, flat, torch.full_like(flat, float("nan")))
    med = flat.nanmedian(dim=1).values
    mad = (flat - med[:, None]).abs().nanmedian(dim=1).values
    return (1.4826 * mad).clamp_min(1e-3)


def background_subtract(images: torch.Tensor, sigma_frac: float = 1 / 32) -> torch.Tensor:
    """Robust-normalized image minus its Gaussian-blurred background.

    Args:
        images: ``(V, 1, H, W)`` any intensity scale.
        sigma_frac: background blur σ as a fraction of H (8 px at 256 px).

    Returns:
        ``(V, 1, H, W)`` float32 high-pass image, in units of the normalized intensity.
    """
    check_images(images, channels=1)
    x = robust_normalize(images)
    sigma = max(0.5, sigma_frac * images.shape[-2])
    return x - _blur(x, sigma)


def xray_channels(
    images: torch.Tensor,
    bg_sigma_frac: float = 1 / 32,
    blob_sigmas_frac: tuple[float, float] = (1 / 256, 3 / 256),
    reference_height: int | None = None,
) -> torch.Tensor:
    """Three detector input channels from one X-ray channel.

    0. the robust-normalized image (≈ [0, 1]);
    1. the background-subtracted image (σ = ``bg_sigma_frac`` · H), divided by its robust
       spread over the object (normalized intensity > :data:`OBJECT_LEVEL`: the air around it
       does not count, so a wider field of view changes nothing) and squashed with
       ``tanh(x / 4)`` into (−1, 1);
    2. a difference of Gaussians at blob scale (``blob_sigmas_frac`` · H), scaled the same way.

    Args:
        images: ``(V, 1, H, W)`` any intensity scale.
        bg_sigma_frac: background σ as a fraction of H.
        blob_sigmas_frac: inner / outer DoG σ as fractions of H.
        reference_height: the H the fractions refer to (``None``: the views' own height). A
            detector that resamples views to the scale it was trained at passes its training
            height, so its filters keep their width at the object, in mm.

    Returns:
        ``(V, 3, H, W)`` float32.

    Example:
        >>> xray_channels(torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """
    check_images(images, channels=1)
    H = reference_height or images.shape[-2]
    x = robust_normalize(images)
    hp = x - _blur(x, max(0.5, bg_sigma_frac * H))
    s1, s2 = (max(0.5, f * H) for f in blob_sigmas_frac)
    dog = _blur(x, s1) - _blur(x, s2)
    obj = x > OBJECT_LEVEL
    hp = torch.tanh(hp / (4 * _robust_scale(hp, obj)[:, None, None, None]))
    dog = torch.tanh(dog / (4 * _robust_scale(dog, obj)[:, None, None, None]))
    return torch.cat([x, hp, dog], dim=1)


def check_input_resize(config: Any) -> None:
    """Refuse a learned detector's config that sets both ``input_size`` and ``input_scale``, or
    a scale that is not positive."""
    name, size, scale = type(config).__name__, config.input_size, config.input_scale
    if size is not None and scale is not None:
        raise ValueError(f"{name}: set input_size ({size}) or input_scale ({scale}), not both")
    if scale is not None and not scale > 0:
        raise ValueError(f"{name}.input_scale: expected > 0, found {scale}")


def _heat_at(heat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A ``(h, w)`` heatmap of a resized input at the view's own ``size``."""
    if tuple(heat.shape) == size:
        return heat
    return torch.nn.functional.interpolate(
        heat[None, None], size=size, mode="bilinear", align_corners=False
    )[0, 0]


class TorchDetectorMixin:
    """What the learned detectors share: the trainable module, its device, :meth:`prepare`
    (per-view normalization to network channels, then the optional explicit resize), the
    prediction loop, training and (state-dict) persistence.

    Needs ``self.model`` (an ``nn.Module``), ``self.config`` with ``bg_sigma_frac``,
    ``input_size``, ``input_scale`` and ``batch_size``, the class attribute ``config_class``
    (the config dataclass) and :meth:`_detect`.
    """

    model: torch.nn.Module
    config: Any
    config_class: type
    name: str

    def _detect(self, x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per prepared view of ``x``: boxes ``(N, 4)`` in px of ``x``, scores, 0-based labels
        and, for dense detectors, the ``(h, w)`` centre heatmap."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[Any]:
        """Boxes (px), scores in [0, 1] and labels (0-based) for each ``(V, 1, H, W)`` view:
        a list of :class:`~mvxray.detectors2d.base.Detections2D`; a flat view gives none."""
        from mvxray.detectors2d.base import Detections2D

        check_images(images, channels=1)
        H, W = images.shape[-2:]
        limits = torch.tensor([W, H, W, H], dtype=torch.float32, device=images.device)
        # A network trained on crops never saw an object larger than a crop; YOLO's coarse levels
        # (barely trained on small crops) return view-sized boxes at confidence 1 otherwise.
        max_box = getattr(self.config, "max_box_px", None)
        max_box = float("inf") if max_box is None else max_box
        was_training = self.model.training
        self.model.eval()
        out = []
        try:
            for chunk in images.split(self.config.batch_size):
                x, scale = self.prepare(chunk)
                for boxes, scores, labels, *heat in self._detect(x):
                    b = (boxes.float().to(images.device) / scale).clamp(min=0).minimum(limits)
                    keep = (b[:, 2:] - b[:, :2]).amax(1) <= max_box
                    out.append(
                        Detections2D(
                            b[keep],
                            scores.to(images.device)[keep],
                            labels.long().to(b.device)[keep],
                            _heat_at(heat[0], (H, W)).to(b.device) if heat else None,
                        )
                    )
        finally:
            self.model.train(was_training)
        for v in torch.nonzero(~has_contrast(images)).flatten().tolist():
            out[v] = Detections2D.empty(images.device)
        return out

    def save(self, path: Any) -> None:
        """Write config and weights to one file, atomically."""
        from mvxray.detectors2d.checkpoint import save_checkpoint

        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        save_checkpoint(path, self.name, self.config, state)

    @classmethod
    def load(cls, path: Any) -> Any:
        """Read a detector written by :meth:`save`."""
        from mvxray.detectors2d.checkpoint import config_from_dict, read_checkpoint

        ckpt = read_checkpoint(path)
        det = cls(config_from_dict(cls.config_class, ckpt["config"]))  # type: ignore[call-arg]
        det.model.load_state_dict(ckpt["state"])
        det.model.eval()
        return det

    @property
    def module(self) -> torch.nn.Module:
        """The trainable ``nn.Module``."""
        return self.model

    def fit(
        self, train: Any, val: Any | None = None, config: Any = None, **kwargs: Any
    ) -> dict[str, float]:
        """Train with :func:`mvxray.detectors2d.train.fit_detector` (``config``: a
        :class:`~mvxray.detectors2d.train.TrainConfig`, or its fields as keywords; ``out=``,
        ``resume=`` pass through). ``val`` is accepted for the interface and not used."""
        from mvxray.detectors2d.checkpoint import config_from_dict
        from mvxray.detectors2d.train import TrainConfig, fit_detector

        out, resume = kwargs.pop("out", None), kwargs.pop("resume", False)
        cfg = config or config_from_dict(TrainConfig, kwargs)
        return fit_detector(self, train, cfg, out=out, resume=resume)  # type: ignore[arg-type]

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return next(self.model.parameters()).device

    def prepare(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Raw full ``(B, 1, H, W)`` views → ``(B, 3, h, w)`` network channels and the scale h / H.

        Normalization needs the whole view (a crop's percentiles differ), so training crops
        are cut from prepared views (see :mod:`mvxray.detectors2d.train`).
        """
        check_images(images, channels=1)
        x = xray_channels(
            images.to(self.device),
            self.config.bg_sigma_frac,
            reference_height=self.config.filter_height,
        )
        factor = self.config.input_scale
        if factor is not None and factor != 1:
            # scale_factor kept as given: a continuous coordinate u maps to exactly u · factor
            x = torch.nn.functional.interpolate(
                x, scale_factor=factor, mode="bilinear", recompute_scale_factor=False
            )
            return x, float(factor)
        size = self.config.input_size
        if size is None or (size, size) == tuple(images.shape[-2:]):
            return x, 1.0
        if images.shape[-2] != images.shape[-1]:
            raise ValueError(
                f"input_size={size} needs square views, found {tuple(images.shape[-2:])}"
            )
        x = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False
        )
        return x, size / images.shape[-1]
