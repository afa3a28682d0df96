"""The one adapter to the DRR renderers (nanodrr and diffdrr): CT volume + rig → X-ray views.

A rendered view is the line integral of the linear attenuation coefficient μ along the ray
from the source to each detector pixel centre (dimensionless, ≥ 0, float32), ``(V, 1, H, W)``.

HU → μ (the one place it happens): ``μ = μ_water · max(0, 1 + HU / 1000)`` per mm, with
``μ_water = 0.0192 /mm`` (water at ~70 keV, nanodrr's value). Air (−1000 HU) is 0, water is
μ_water, and denser material grows linearly; images are therefore on a physical scale (a 20 cm
water path gives ≈ 3.84).

Conventions converted here and only here (see ``docs/conventions.md`` for ours):

* **nanodrr** renders from ``k_inv`` = K⁻¹, ``rt_inv`` = camera → world and ``sdd``; its camera
  frame is OpenCV's (x right, y down, z towards the detector) and its detector pixel ``(r, c)``
  sits at ``sdd · K⁻¹ (c + 0.5, r + 0.5, 1)`` — exactly our pixel-centre rule. So we pass
  ``k_inv = K⁻¹``, ``rt_inv = T_cam_from_ct⁻¹`` and ``sdd = fx · pixel_mm``, with no axis flip.
  Its :class:`nanodrr.data.Subject` stores the volume as ``(1, 1, D, H, W)`` with grid
  x ↔ our array axis i: we build it directly from ``data.permute(2, 1, 0)`` and our
  ``T_ct_from_voxel`` (so "world" = our CT frame, LPS, origin at the volume centre), bypassing
  torchio's RAS affine.
* **diffdrr** (``DRR``) wraps a C-arm ``Detector`` with its own reorientation ("AP" frame),
  a reversed x axis (radiologic display) and a float32 world affine. We bypass that layer and feed
  its renderers (:class:`diffdrr.renderers.Siddon`, exact, and ``Trilinear``) with rays already in
  **voxel index** coordinates: source ``T_ct_from_voxel⁻¹ · source_ct`` and targets
  ``T_ct_from_voxel⁻¹ · T_ct_from_cam · sdd · K⁻¹ (c + 0.5, r + 0.5, 1)``, computed in float64, and
  the initial image = ray length in mm. diffdrr's voxel grid (``voxel_shift = 0.5``: voxel centres
  at integer indices, ``volume.permute(2, 1, 0)`` for ``grid_sample``) is ours.

Set-up (HU → μ, cropping to the non-zero support, building the subject) happens once per call;
views are rendered in batches of views × detector rows that bound the number of samples held in
memory (``max_samples``). Voxels where μ = 0 are cropped away (with a one-voxel margin) before
rendering: exact for both volume models, and it concentrates nanodrr's samples on the object.

Indication masks: a second pass renders, per indication ``m`` (label ``m + 1``), the chord length
(mm) of each ray through the labelled voxels — a ones-volume cropped to the labels' bounding box
with nearest-label routing (nanodrr) or Siddon's exact voxel chords (diffdrr). The tight box of
each per-view mask is stored next to the geometric projected 3D box (:func:`render_case`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mvxray.datasets.base import Volume
from mvxray.geometry import Rig, invert_rigid, project_boxes3d
from mvxray.geometry._checks import ShapeError

#: Linear attenuation of water, 1/mm, at ~70 keV (nanodrr's ``MU_WATER``).
MU_WATER = 0.0192

#: Backend name → description. ``diffdrr`` is Siddon's exact voxel traversal (the reference).
BACKENDS = {
    "nanodrr": "nanodrr grid-sample ray marching (trilinear); default, fastest",
    "diffdrr": "diffdrr Siddon (exact voxel chords, nearest); the reference",
    "diffdrr_trilinear": "diffdrr trilinear ray marching",
}

#: Default bound on ray samples held at once (views × rows × width × samples).
MAX_SAMPLES = 1 << 24


def hu_to_mu(hu: torch.Tensor, mu_water: float = MU_WATER) -> torch.Tensor:
    """Hounsfield units → linear attenuation, 1/mm: ``μ_water · max(0, 1 + HU/1000)``.

    Example:
        >>> hu_to_mu(torch.tensor([-1000.0, 0.0, 1000.0])).tolist()
        [0.0, 0.019200000911951065, 0.03840000182390213]
    """
    return (mu_water * (1.0 + hu.float() / 1000.0)).clamp(min=0.0)


def default_n_samples(shape: tuple[int, ...], per_voxel: float = 1.0 / 3.0) -> int:
    """Samples per ray for a volume of ``shape`` voxels: ``per_voxel`` × its diagonal, at least 64.

    For the bundled chest CT (512 × 512 × 133) this gives 246 samples (a step of ≈ 1.5 mm along a
    36 cm chord), at a mean relative difference to Siddon of ≈ 0.3 % (see the render benchmark).

    Example:
        >>> default_n_samples((512, 512, 133)), default_n_samples((32, 32, 32))
        (246, 64)
    """
    diag = math.sqrt(sum(float(s) ** 2 for s in shape))
    return max(64, math.ceil(per_voxel * diag))


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKENDS)}, found {backend!r}")


def _crop(
    data: torch.Tensor, keep: torch.Tensor, T_ct_from_voxel: torch.Tensor, margin: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``data`` to the bounding box of ``keep`` plus ``margin`` voxels; shift the affine."""
    if not bool(keep.any()):
        return data[:1, :1, :1] * 0, T_ct_from_voxel
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = keep.any(dim=other).nonzero().flatten()
        lo.append(max(int(idx[0]) - margin, 0))
        hi.append(min(int(idx[-1]) + margin + 1, data.shape[axis]))
    shift = torch.eye(4, dtype=T_ct_from_voxel.dtype)
    shift[:3, 3] = torch.tensor(lo, dtype=T_ct_from_voxel.dtype)
    out = data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return out.contiguous(), T_ct_from_voxel @ shift


def _row_chunks(V: int, H: int, W: int, n_samples: int, max_samples: int, batch_views: int | None):
    """Yield (view slice, row slice) blocks holding at most ``max_samples`` ray samples."""
    per_row = max(1, W * n_samples)
    rows = max(1, min(H, max_samples // per_row))
    bv = 1 if rows < H else max(1, min(V, max_samples // (per_row * H)))
    if batch_views is not None:
        bv = max(1, min(bv, batch_views))
    for v0 in range(0, V, bv):
        for r0 in range(0, H, rows):
            yield slice(v0, min(V, v0 + bv)), slice(r0, min(H, r0 + rows))


@dataclass(frozen=True)
class _Prepared:
    """A volume converted once per call for one backend (μ or indicator, cropped, on device)."""

    data: torch.Tensor  # (I, J, K) float32 on device
    labels: torch.Tensor | None  # (I, J, K) float32 label ids, or None
    T_ct_from_voxel: torch.Tensor  # (4, 4) float64 (CPU)
    n_classes: int


def _nanodrr_subject(prep: _Prepared, device: torch.device):
    from nanodrr.data import Subject

    img = prep.data.permute(2, 1, 0)[None, None].contiguous()
    lab = (
        prep.labels.permute(2, 1, 0)[None, None].contiguous()
        if prep.labels is not None
        else torch.zeros_like(img)
    )
    v2w = prep.T_ct_from_voxel
    return Subject(
        img,
        lab,
        v2w.float(),
        torch.linalg.inv(v2w).float(),
        Subject._make_voxel_to_grid(img.shape),
        torch.zeros(3),
        max_label=prep.n_classes - 1,
        convert_to_mu=False,
    ).to(device)


def _march(
    prep: _Prepared,
    rig: Rig,
    backend: str,
    n_samples: int,
    device: torch.device,
    batch_views: int | None,
    max_samples: int,
) -> torch.Tensor:
    """Render ``(V, C, H, W)``: C = 1 (no labels) or one channel per label id (0 = background)."""
    V, H, W = rig.num_views, rig.height, rig.width
    C = prep.n_classes
    out = torch.zeros(V, C, H, W, dtype=torch.float32, device=device)
    K = rig.K.to(torch.float64).cpu()
    T_ct_from_cam = invert_rigid(rig.T_cam_from_ct.to(torch.float64).cpu())
    sdd = (K[:, 0, 0] * rig.pixel_mm.to(torch.float64).cpu()).clone()
    if backend == "nanodrr":
        from nanodrr.drr import render

        subject = _nanodrr_subject(prep, device)
        cost = n_samples
    else:
        from diffdrr.renderers import Siddon, Trilinear

        renderer = Siddon() if backend == "diffdrr" else Trilinear()
        vol = prep.data.to(device)
        mask = prep.labels.to(device) if prep.labels is not None else None
        T_voxel_from_ct = torch.linalg.inv(prep.T_ct_from_voxel)
        cost = sum(prep.data.shape) + 3 if backend == "diffdrr" else n_samples
    for vs, rs in _row_chunks(V, H, W, cost, max_samples, batch_views):
        Kc = K[vs].clone()
        Kc[:, 1, 2] -= rs.start  # a block of rows is an image whose principal point moved up
        h = rs.stop - rs.start
        if backend == "nanodrr":
            img = render(
                subject,
                torch.linalg.inv(Kc).float().to(device),
                T_ct_from_cam[vs].float().to(device),
                sdd[vs].float().to(device),
                h,
                W,
                n_samples=n_samples,
            )
        else:
            v, u = torch.meshgrid(
                torch.arange(h, dtype=torch.float64) + 0.5,
                torch.arange(W, dtype=torch.float64) + 0.5,
                indexing="ij",
            )
            uv1 = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3)
            tgt_cam = sdd[vs, None, None] * torch.einsum("bij,nj->bni", torch.linalg.inv(Kc), uv1)
            M = T_voxel_from_ct @ T_ct_from_cam[vs]  # (B, 4, 4) camera → voxel index
            tgt = tgt_cam @ M[:, :3, :3].transpose(-1, -2) + M[:, None, :3, 3]
            src = M[:, None, :3, 3]
            length = (tgt_cam.norm(dim=-1)).unsqueeze(1)  # (B, 1, N) mm
            kwargs = {"mask": mask} if mask is not None else {}
            if backend == "diffdrr_trilinear":
                kwargs["n_points"] = n_samples
            img = renderer(
                vol,
                src.float().to(device),
                tgt.float().to(device),
                length.float().to(device),
                **kwargs,
            )
            if img.shape[1] < C:  # diffdrr counts channels from the labels present
                img = torch.nn.functional.pad(img, (0, 0, 0, C - img.shape[1]))
            img = img.reshape(img.shape[0], C, h, W)
        out[vs, :, rs] = img.float()
    return out


def _resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def render_views(
    volume: Volume,
    rig: Rig,
    backend: str = "nanodrr",
    *,
    batch_views: int | None = None,
    device: torch.device | str | None = None,
    n_samples: int | None = None,
    mu_water: float = MU_WATER,
    max_samples: int = MAX_SAMPLES,
) -> torch.Tensor:
    """Render all views of ``rig`` through ``volume`` in one call.

    Args:
        volume: CT volume in HU, placed in the CT frame.
        rig: V calibrated views of H × W px.
        backend: one of :data:`BACKENDS`.
        batch_views: at most this many views per batch (memory is also bounded by ``max_samples``).
        device: where to render (``"cpu"``, ``"cuda"``); default CPU.
        n_samples: samples per ray (nanodrr, diffdrr_trilinear); default
            :func:`default_n_samples` of the cropped volume. Siddon visits every voxel plane.
        mu_water: μ of water, 1/mm (see :func:`hu_to_mu`).
        max_samples: bound on ray samples held at once.

    Returns:
        ``(V, 1, H, W)`` float32 line integrals of μ (dimensionless), on ``device``.

    Example:
        >>> from mvxray.geometry import T_ct_from_voxel
        >>> vol = Volume(torch.zeros(8, 8, 8), T_ct_from_voxel((8, 8, 8), (1.0, 1.0, 1.0)))
        >>> render_views(vol, Rig.seed(16)).shape
        torch.Size([10, 1, 16, 16])
    """
    _check_backend(backend)
    dev = _resolve_device(device)
    mu = hu_to_mu(volume.data, mu_water)
    T = volume.T_ct_from_voxel.to(torch.float64).cpu()
    mu, T = _crop(mu, mu > 0, T)
    prep = _Prepared(mu.to(dev), None, T, 1)
    ns = n_samples if n_samples is not None else default_n_samples(tuple(mu.shape))
    return _march(prep, rig, backend, ns, dev, batch_views, max_samples)


def render_masks(
    volume: Volume,
    rig: Rig,
    num_indications: int | None = None,
    backend: str = "nanodrr",
    *,
    batch_views: int | None = None,
    device: torch.device | str | None = None,
    max_samples: int = MAX_SAMPLES,
) -> torch.Tensor:
    """Per-indication chord lengths (mm) of every ray through the labelled voxels.

    Args:
        volume: with ``labels`` (indication ``m`` = label ``m + 1``).
        rig: the views.
        num_indications: M (default: the largest label).
        backend: one of :data:`BACKENDS` (``diffdrr_trilinear`` uses Siddon here).
        batch_views: at most this many views per batch.
        device: where to render.
        max_samples: bound on ray samples held at once.

    Returns:
        ``(V, M, H, W)`` float32 chord lengths, mm (> 0 inside the projected mask).

    Raises:
        ValueError: the volume has no label map.
    """
    _check_backend(backend)
    if volume.labels is None:
        raise ValueError("render_masks: volume.labels is None (no label map to render)")
    dev = _resolve_device(device)
    labels = volume.labels.long()
    M = int(labels.max()) if num_indications is None else int(num_indications)
    V, H, W = rig.num_views, rig.height, rig.width
    if M == 0:
        return torch.zeros(V, 0, H, W, device=dev)
    labels = torch.where(labels > M, torch.zeros_like(labels), labels)
    T = volume.T_ct_from_voxel.to(torch.float64).cpu()
    # Two voxels of margin: every trilinear neighbour of a sample near a label stays inside.
    lab, Tc = _crop(labels, labels > 0, T, margin=2)
    prep = _Prepared(torch.ones(lab.shape, device=dev), lab.float().to(dev), Tc, M + 1)
    # Step ≤ 1/3 voxel so nearest-label routing sees every voxel a ray crosses.
    ns = default_n_samples(tuple(lab.shape), per_voxel=3.0)
    be = "nanodrr" if backend == "nanodrr" else "diffdrr"
    out = _march(prep, rig, be, ns, dev, batch_views, max_samples)
    return out[:, 1:]


def mask_boxes(
    chords: torch.Tensor, min_chord_mm: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of rendered masks: ``(V, M, H, W)`` → boxes ``(V, M, 4)`` px, non-empty ``(V, M)``.

    A mask pixel is one whose chord exceeds ``min_chord_mm``; the box around pixel columns
    c0..c1 and rows r0..r1 is ``(c0, r0, c1 + 1, r1 + 1)`` (pixel-centre rule). Empty masks get
    a zero box.

    Example:
        >>> m = torch.zeros(1, 1, 6, 8); m[0, 0, 2:4, 3:6] = 1.0
        >>> b, ok = mask_boxes(m)
        >>> b[0, 0].tolist(), bool(ok[0, 0])
        ([3.0, 2.0, 6.0, 4.0], True)
    """
    if chords.dim() != 4:
        raise ShapeError(f"chords: expected shape (V, M, H, W), found {tuple(chords.shape)}")
    m = chords > min_chord_mm
    cols, rows = m.any(dim=-2), m.any(dim=-1)  # (V, M, W), (V, M, H)
    W, H = chords.shape[-1], chords.shape[-2]
    ar_w = torch.arange(W, device=chords.device, dtype=torch.float32)
    ar_h = torch.arange(H, device=chords.device, dtype=torch.float32)
    big = float(max(H, W) + 1)
    x1 = torch.where(cols, ar_w, big).amin(-1)
    x2 = torch.where(cols, ar_w, -1.0).amax(-1) + 1
    y1 = torch.where(rows, ar_h, big).amin(-1)
    y2 = torch.where(rows, ar_h, -1.0).amax(-1) + 1
    ok = cols.any(-1)
    boxes = torch.stack([x1, y1, x2, y2], -1)
    return torch.where(ok[..., None], boxes, torch.zeros_like(boxes)), ok


@dataclass
class RenderedCase:
    """All views of one case and their 2D ground truth.

    Attributes:
        images: ``(V, 1, H, W)`` float32 line integrals of μ.
        boxes2d: ``(V, M, 4)`` px — the 3D boxes projected by :func:`mvxray.geometry.project_boxes3d`
            (clipped to the image); the ground truth consistent with ``boxes3d`` by construction.
        visible2d: ``(V, M)`` bool — the projected box has area in the image and (when masks were
            rendered) the indication's rendered mask has at least one pixel.
        boxes2d_mask: ``(V, M, 4)`` px tight boxes of the rendered masks (zeros when empty), or None.
        chords: ``(V, M, H, W)`` mm chord lengths through each indication, or None.
    """

    images: torch.Tensor
    boxes2d: torch.Tensor
    visible2d: torch.Tensor
    boxes2d_mask: torch.Tensor | None = None
    chords: torch.Tensor | None = None


def render_case(
    volume: Volume,
    rig: Rig,
    boxes3d: torch.Tensor,
    backend: str = "nanodrr",
    *,
    masks: bool = True,
    device: torch.device | str | None = None,
    **kwargs,
) -> RenderedCase:
    """Render the views of a case plus its 2D ground truth (geometric and rendered-mask boxes).

    Args:
        volume: CT in HU (with ``labels`` for mask boxes).
        rig: V views.
        boxes3d: ``(M, 6)`` CT mm; indication ``m`` ↔ label ``m + 1``.
        backend: one of :data:`BACKENDS`.
        masks: also render the label masks (needs ``volume.labels``).
        device: where to render.
        **kwargs: passed to :func:`render_views` (``n_samples``, ``batch_views``, ...).

    Returns:
        A :class:`RenderedCase` (tensors on CPU).
    """
    if boxes3d.dim() != 2 or boxes3d.shape[-1] != 6:
        raise ShapeError(f"boxes3d: expected shape (M, 6), found {tuple(boxes3d.shape)}")
    images = render_views(volume, rig, backend, device=device, **kwargs).cpu()
    b3 = boxes3d.to(torch.float64).cpu()
    boxes2d, visible = project_boxes3d(
        b3,
        rig.K.to(torch.float64).cpu(),
        rig.T_cam_from_ct.to(torch.float64).cpu(),
        rig.height,
        rig.width,
    )
    boxes2d_mask = chords = None
    if masks and volume.labels is not None and b3.shape[0] > 0:
        keep = {k: v for k, v in kwargs.items() if k in ("batch_views", "max_samples")}
        chords = render_masks(volume, rig, b3.shape[0], backend, device=device, **keep).cpu()
        boxes2d_mask, nonempty = mask_boxes(chords)
        visible = visible & nonempty
    return RenderedCase(images, boxes2d.float(), visible, boxes2d_mask, chords)
