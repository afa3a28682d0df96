"""The multi-view X-ray rig: V calibrated views of one object.

A :class:`Rig` holds, per view, the intrinsics ``K`` and the extrinsics ``T_cam_from_ct``,
plus the detector size (px, shared by all views so images stack as ``(V, C, H, W)``) and the
pixel pitch (mm). Constructors cover the circular scan, the seed-000 preset, C-arm angles
and arbitrary poses; ``to_views``/``from_views`` give the JSON form stored in ``case.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from kornia.geometry.camera import PinholeCamera

from mvxray.geometry._checks import ShapeError, check_intrinsics, check_rigid, check_shape
from mvxray.geometry.camera import (
    intrinsics_from_detector,
    project_points,
    visible_mask,
)
from mvxray.geometry.frames import source_position

#: Seed 000 used DiffDRR's old ``sdr`` (source-to-detector *radius*) of 300 mm, which places the
#: detector 300 mm beyond the isocentre: a source-to-detector distance of 600 mm.
SEED_SDD_MM = 600.0
SEED_SID_MM = 300.0
SEED_DETECTOR_MM = 800.0  # 1024 px x 0.78125 mm


def look_at(source_ct: torch.Tensor, target_ct: torch.Tensor, up_ct: torch.Tensor) -> torch.Tensor:
    """Extrinsics of a camera at ``source_ct`` looking at ``target_ct`` with image-up ``up_ct``.

    Camera z points from the source to the target, camera y (image down) is ``-up`` made
    orthogonal to z, and x = y × z (right-handed).

    Args:
        source_ct: ``(*, 3)`` source (camera centre), CT mm.
        target_ct: ``(*, 3)`` point on the principal axis, CT mm.
        up_ct: ``(*, 3)`` direction that appears upwards in the image.

    Returns:
        ``(*, 4, 4)`` ``T_cam_from_ct``.

    Raises:
        ValueError: the source equals the target, or ``up`` is parallel to the viewing axis.

    Example:
        >>> T = look_at(torch.tensor([0.0, -10.0, 0.0]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
        >>> (T[:3, :3] + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
        [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
    """
    z = target_ct - source_ct
    zn = z.norm(dim=-1, keepdim=True)
    if bool((zn < 1e-9).any()):
        raise ValueError("look_at: the source coincides with the target")
    z = z / zn
    y = -(up_ct - (up_ct * z).sum(-1, keepdim=True) * z)
    yn = y.norm(dim=-1, keepdim=True)
    if bool((yn < 1e-9).any()):
        raise ValueError("look_at: up_ct is parallel to the viewing direction")
    y = y / yn
    x = torch.linalg.cross(y, z, dim=-1)
    R = torch.stack([x, y, z], dim=-2)  # rows: camera axes in CT coordinates
    T = torch.zeros((*R.shape[:-2], 4, 4), dtype=R.dtype, device=R.device)
    T[..., :3, :3] = R
    T[..., :3, 3] = -(R @ source_ct.unsqueeze(-1)).squeeze(-1)
    T[..., 3, 3] = 1.0
    return T


def _rotate(v: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues rotation of ``v (3,)`` about unit ``axis (3,)`` by ``angle (A,)`` rad → ``(A, 3)``."""
    c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
    return (
        v * c
        + torch.linalg.cross(axis.expand(len(angle), 3), v.expand(len(angle), 3)) * s
        + (axis * (axis @ v)) * (1 - c)
    )


@dataclass(frozen=True)
class Rig:
    """V calibrated X-ray views.

    Attributes:
        K: ``(V, 3, 3)`` intrinsics, px.
        T_cam_from_ct: ``(V, 4, 4)`` rigid extrinsics, CT mm → camera mm.
        height: detector rows, px (all views).
        width: detector columns, px (all views).
        pixel_mm: ``(V,)`` detector pixel pitch, mm.
    """

    K: torch.Tensor
    T_cam_from_ct: torch.Tensor
    height: int
    width: int
    pixel_mm: torch.Tensor

    def __post_init__(self) -> None:
        check_shape(self.K, "K", (None, 3, 3))
        check_shape(self.T_cam_from_ct, "T_cam_from_ct", (None, 4, 4))
        if self.K.dim() != 3 or self.T_cam_from_ct.shape[0] != self.K.shape[0]:
            raise ShapeError(
                f"Rig: K must be (V, 3, 3) and T_cam_from_ct (V, 4, 4) with the same V; found "
                f"{tuple(self.K.shape)} and {tuple(self.T_cam_from_ct.shape)}"
            )
        check_intrinsics(self.K)
        check_rigid(self.T_cam_from_ct, "T_cam_from_ct")
        if self.pixel_mm.shape != (self.K.shape[0],):
            raise ShapeError(
                f"pixel_mm: expected shape ({self.K.shape[0]},), found {tuple(self.pixel_mm.shape)}"
            )
        if self.height <= 0 or self.width <= 0:
            raise ValueError(
                f"Rig: height and width must be positive, found {self.height}x{self.width}"
            )

    # ------------------------------------------------------------------ properties
    @property
    def num_views(self) -> int:
        """Number of views V."""
        return int(self.K.shape[0])

    @property
    def source_ct(self) -> torch.Tensor:
        """``(V, 3)`` X-ray source positions in CT mm."""
        return source_position(self.T_cam_from_ct)

    @property
    def sdd_mm(self) -> torch.Tensor:
        """``(V,)`` source-to-detector distance, mm (``fx · pixel_mm``)."""
        return self.K[:, 0, 0] * self.pixel_mm

    @property
    def object_pixel_mm(self) -> torch.Tensor:
        """``(V,)`` size of one pixel at the depth of the CT origin, mm: the detector pitch over
        the magnification (``depth / fx``) — the scale at which a view shows the object.

        Example:
            >>> float(Rig.seed(size=256).object_pixel_mm[0])   # 3.125 mm pixels, magnification 2
            1.5625
        """
        return self.T_cam_from_ct[:, 2, 3] / self.K[:, 0, 0]

    def project(self, points_ct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project ``(N, 3)`` CT points into all views → uv ``(V, N, 2)``, depth, visible ``(V, N)``."""
        uv, z = project_points(points_ct.to(self.K.dtype), self.K, self.T_cam_from_ct)
        return uv, z, visible_mask(uv, z, self.height, self.width)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Rig:
        """A copy on another device / dtype."""
        return Rig(
            self.K.to(device=device, dtype=dtype),
            self.T_cam_from_ct.to(device=device, dtype=dtype),
            self.height,
            self.width,
            self.pixel_mm.to(device=device, dtype=dtype),
        )

    def subset(self, views: Sequence[int]) -> Rig:
        """The rig restricted to the given view indices."""
        idx = torch.as_tensor(list(views), dtype=torch.long)
        return Rig(
            self.K[idx], self.T_cam_from_ct[idx], self.height, self.width, self.pixel_mm[idx]
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def circular(
        cls,
        num_views: int,
        sid_mm: float,
        sdd_mm: float,
        height: int,
        width: int,
        pixel_mm: float,
        start_deg: float = 0.0,
        arc_deg: float = 360.0,
        axis: Sequence[float] = (0.0, 0.0, 1.0),
        offset_px: tuple[float, float] = (0.0, 0.0),
        dtype: torch.dtype = torch.float64,
    ) -> Rig:
        """V views evenly spaced over ``arc_deg`` about ``axis`` through the CT origin.

        View i sits at angle ``start_deg + i · arc_deg / V``. At angle 0 the source lies on the
        part of the CT's −Y axis (anterior) orthogonal to ``axis`` (−Z if ``axis`` is ±Y), looks at
        the origin, and ``axis`` points up in the image; positive angles turn right-handed about
        ``axis``.

        Args:
            num_views: V ≥ 1.
            sid_mm: source-to-isocentre (CT origin) distance, mm.
            sdd_mm: source-to-detector distance, mm (> sid_mm for a real rig).
            height: detector rows, px.
            width: detector columns, px.
            pixel_mm: pixel pitch, mm.
            start_deg: angle of view 0, degrees.
            arc_deg: total arc covered by the V views, degrees.
            axis: rotation axis in CT coordinates.
            offset_px: principal-point offset from the detector centre, px.
            dtype: tensor dtype.

        Example:
            >>> (Rig.circular(4, 300.0, 600.0, 64, 64, 2.0).source_ct[1].round() + 0.0).tolist()
            [300.0, 0.0, 0.0]
        """
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, found {num_views}")
        if sid_mm <= 0:
            raise ValueError(f"sid_mm must be positive, found {sid_mm}")
        ax = torch.tensor([float(a) for a in axis], dtype=dtype)
        if ax.shape != (3,) or float(ax.norm()) < 1e-9:
            raise ValueError(f"axis must be a non-zero 3-vector, found {list(axis)}")
        ax = ax / ax.norm()
        ref = torch.tensor([0.0, -1.0, 0.0], dtype=dtype)
        ref = ref - (ref @ ax) * ax
        if float(ref.norm()) < 1e-6:
            ref = torch.tensor([0.0, 0.0, -1.0], dtype=dtype)
            ref = ref - (ref @ ax) * ax
        ref = ref / ref.norm()
        angles = torch.deg2rad(
            torch.tensor(start_deg, dtype=dtype)
            + torch.arange(num_views, dtype=dtype) * (arc_deg / num_views)
        )
        sources = sid_mm * _rotate(ref, ax, angles)
        T = look_at(sources, torch.zeros_like(sources), ax.expand_as(sources))
        K = intrinsics_from_detector(
            torch.full((num_views,), sdd_mm, dtype=dtype), pixel_mm, height, width, offset_px, dtype
        )
        return cls(K, T, height, width, torch.full((num_views,), float(pixel_mm), dtype=dtype))

    @classmethod
    def seed(cls, size: int = 1024, sdd_mm: float = SEED_SDD_MM, start_deg: float = 0.0) -> Rig:
        """Seed 000's rig: 10 views at 36°·i about Z, source 300 mm from the CT centre.

        The detector is 800 mm wide (1024 px × 0.78125 mm); at a reduced ``size`` the pixel pitch
        grows so the field of view stays the same. ``sdd_mm`` defaults to 600 mm: the seed's
        "300 mm, equivalent to 600 mm on a C-arm" is DiffDRR's old source-to-detector *radius*.

        Example:
            >>> r = Rig.seed(size=256)
            >>> r.num_views, r.height, float(r.pixel_mm[0]), float(r.sdd_mm[0])
            (10, 256, 3.125, 600.0)
        """
        return cls.circular(
            10, SEED_SID_MM, sdd_mm, size, size, SEED_DETECTOR_MM / size, start_deg=start_deg
        )

    @classmethod
    def carm(
        cls,
        lao_deg: Sequence[float],
        cranial_deg: Sequence[float],
        sid_mm: float,
        sdd_mm: float,
        height: int,
        width: int,
        pixel_mm: float,
        dtype: torch.dtype = torch.float64,
    ) -> Rig:
        """C-arm views from LAO/RAO (negative LAO) and cranial/caudal (negative cranial) angles.

        At (0°, 0°) the source is posterior (+Y) and the detector anterior, the head (+Z) up in
        the image. LAO moves the detector towards the patient's left (+X), cranial towards the
        head (+Z): the isocentre-to-detector direction is
        ``(sin a cos b, −cos a cos b, sin b)`` for LAO ``a`` and cranial ``b``.

        Example:
            >>> (Rig.carm([0.0], [0.0], 500.0, 1000.0, 32, 32, 1.0).source_ct[0] + 0.0).tolist()
            [0.0, 500.0, 0.0]
        """
        a = torch.deg2rad(torch.tensor([float(x) for x in lao_deg], dtype=dtype))
        b = torch.deg2rad(torch.tensor([float(x) for x in cranial_deg], dtype=dtype))
        if a.shape != b.shape or a.numel() == 0:
            raise ValueError("carm: lao_deg and cranial_deg need the same non-zero length")
        d = torch.stack(
            [torch.sin(a) * torch.cos(b), -torch.cos(a) * torch.cos(b), torch.sin(b)], -1
        )
        sources = -sid_mm * d
        # Image-up is the head, tilted with the cranial angle so it stays orthogonal to the axis.
        up = torch.stack(
            [-torch.sin(a) * torch.sin(b), torch.cos(a) * torch.sin(b), torch.cos(b)], -1
        )
        T = look_at(sources, torch.zeros_like(sources), up)
        V = a.numel()
        K = intrinsics_from_detector(
            torch.full((V,), sdd_mm, dtype=dtype), pixel_mm, height, width, dtype=dtype
        )
        return cls(K, T, height, width, torch.full((V,), float(pixel_mm), dtype=dtype))

    @classmethod
    def from_poses(
        cls,
        K: torch.Tensor,
        T_cam_from_ct: torch.Tensor,
        height: int,
        width: int,
        pixel_mm: float | torch.Tensor,
    ) -> Rig:
        """A rig from arbitrary ``(V, 3, 3)`` intrinsics and ``(V, 4, 4)`` extrinsics."""
        pm = torch.as_tensor(pixel_mm, dtype=K.dtype)
        if pm.dim() == 0:
            pm = pm.expand(K.shape[0]).clone()
        return cls(K, T_cam_from_ct, height, width, pm)

    # ------------------------------------------------------------------ interop
    def to_kornia(self) -> PinholeCamera:
        """A batched ``kornia.geometry.camera.PinholeCamera`` (batch = views)."""
        V = self.num_views
        intr = torch.eye(4, dtype=self.K.dtype, device=self.K.device).repeat(V, 1, 1)
        intr[:, :3, :3] = self.K
        h = torch.full((V,), float(self.height), dtype=self.K.dtype, device=self.K.device)
        w = torch.full((V,), float(self.width), dtype=self.K.dtype, device=self.K.device)
        return PinholeCamera(intr, self.T_cam_from_ct.clone(), h, w)

    @classmethod
    def from_kornia(cls, camera: PinholeCamera, pixel_mm: float | torch.Tensor) -> Rig:
        """A rig from a batched kornia ``PinholeCamera`` (``extrinsics`` = world → camera)."""
        hs, ws = camera.height.unique(), camera.width.unique()
        if hs.numel() != 1 or ws.numel() != 1:
            raise ValueError("from_kornia: all cameras must share one image size")
        return cls.from_poses(
            camera.intrinsics[:, :3, :3].clone(),
            camera.extrinsics.clone(),
            int(hs.item()),
            int(ws.item()),
            pixel_mm,
        )

    def to_views(self) -> list[dict[str, Any]]:
        """JSON-ready per-view dicts: ``K``, ``T_cam_from_ct``, ``height``, ``width``, ``pixel_mm``."""
        return [
            {
                "K": self.K[v].tolist(),
                "T_cam_from_ct": self.T_cam_from_ct[v].tolist(),
                "height": self.height,
                "width": self.width,
                "pixel_mm": float(self.pixel_mm[v]),
            }
            for v in range(self.num_views)
        ]

    @classmethod
    def from_views(cls, views: Sequence[dict[str, Any]], dtype: torch.dtype = torch.float64) -> Rig:
        """Inverse of :meth:`to_views`; refuses missing keys and mixed image sizes."""
        if not views:
            raise ValueError("from_views: no views given")
        for i, v in enumerate(views):
            missing = {"K", "T_cam_from_ct", "height", "width", "pixel_mm"} - set(v)
            if missing:
                raise KeyError(f"view {i}: missing key(s) {sorted(missing)}")
        sizes = {(int(v["height"]), int(v["width"])) for v in views}
        if len(sizes) != 1:
            raise ValueError(
                f"from_views: all views must share one image size, found {sorted(sizes)}"
            )
        (h, w) = sizes.pop()
        K = torch.tensor([v["K"] for v in views], dtype=dtype)
        T = torch.tensor([v["T_cam_from_ct"] for v in views], dtype=dtype)
        pm = torch.tensor([float(v["pixel_mm"]) for v in views], dtype=dtype)
        return cls(K, T, h, w, pm)

    def to_json(self) -> str:
        """Serialize to a JSON string (``{"views": [...]}``)."""
        return json.dumps({"views": self.to_views()})

    @classmethod
    def from_json(cls, text: str) -> Rig:
        """Inverse of :meth:`to_json`."""
        return cls.from_views(json.loads(text)["views"])


def angle_between_views_deg(rig: Rig, a: int, b: int) -> float:
    """Angle between the principal axes of views ``a`` and ``b``, degrees."""
    za, zb = rig.T_cam_from_ct[a, 2, :3], rig.T_cam_from_ct[b, 2, :3]
    return math.degrees(math.acos(float((za @ zb).clamp(-1.0, 1.0))))
