"""``mvxray register``: the pose of an X-ray given its CT (RayEmb + PnP/RANSAC).

Inputs:

* ``--ct``: a NIfTI CT in HU (``.nii`` / ``.nii.gz``), or ``phantom:chest[:SEED]`` for the
  embedded chest phantom.
* ``--xray``: an ``.npy`` image ``(H, W)`` or ``(1, H, W)``, dense = bright (a line integral;
  any scale — images are normalized per image); raw detector counts (dense = dark) with
  ``--transmission``, converted to ``-log(I / max I)``.
* ``--geometry``: a JSON object with ``K`` (3×3, px), ``height``, ``width``, ``pixel_mm`` and
  ``T_cam_from_ct`` (4×4, the *initial* pose guess, world → camera, mm) — the per-view form of
  ``Rig.to_views()``.
* ``--model``: a trained RayEmb model (``RayEmbModel.save``; the registration benchmark writes
  one to ``<cache>/rayemb/``).

Output (``--out``): JSON with ``T_cam_from_ct`` (4×4), ``T_init``, ``success``, ``inliers``,
``landmarks`` and ``seconds``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mvxray.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "register",
        help="estimate an X-ray's pose against its CT (RayEmb landmarks + PnP/RANSAC)",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--ct", required=True, help="NIfTI CT in HU, or phantom:chest[:SEED]")
    p.add_argument("--xray", required=True, type=Path, help=".npy X-ray image (H, W)")
    p.add_argument(
        "--transmission",
        action="store_true",
        help="the X-ray is raw detector counts (dense = dark): use -log(I / max I)",
    )
    p.add_argument(
        "--geometry",
        required=True,
        type=Path,
        help="JSON: K, height, width, pixel_mm, T_cam_from_ct (initial)",
    )
    p.add_argument("--model", required=True, type=Path, help="trained RayEmb model (.pt)")
    p.add_argument("--out", type=Path, default=Path("registration.json"), help="output JSON")
    p.add_argument(
        "--coarse-mm",
        type=float,
        default=2.5,
        help="resample the CT to this voxel for templates (0 = keep)",
    )
    p.add_argument("--passes", type=int, default=3, help="registration passes")
    p.add_argument("--landmarks", type=int, default=400, help="3D landmarks sampled")
    p.add_argument("--refine", action="store_true", help="finish with intensity-based refinement")
    p.add_argument("--seed", type=int, default=0, help="seed of the landmark sampling")
    p.set_defaults(func=run)


def _load_ct(spec: str):
    if spec.startswith("phantom:"):
        from mvxray.datasets.phantoms import PHANTOMS

        parts = spec.split(":")
        name = parts[1]
        if name not in PHANTOMS:
            raise ValueError(f"--ct: unknown phantom {name!r}; known: {sorted(PHANTOMS)}")
        seed = int(parts[2]) if len(parts) > 2 else 0
        return PHANTOMS[name](seed, vary_anatomy=False).volume
    from mvxray.datasets.ct import load_nifti

    return load_nifti(spec)


def _load_geometry(path: Path) -> dict:
    import json

    if not path.is_file():
        raise FileNotFoundError(f"--geometry: no such file {path}")
    g = json.loads(path.read_text())
    missing = {"K", "height", "width", "pixel_mm", "T_cam_from_ct"} - set(g)
    if missing:
        raise KeyError(f"--geometry: missing key(s) {sorted(missing)} in {path}")
    return g


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import numpy as np
    import torch

    from mvxray.io import atomic_write_json
    from mvxray.lifting.rayemb.model import RayEmbModel
    from mvxray.registration.register import RegisterConfig, register_xray

    geo = _load_geometry(args.geometry)
    if not args.xray.is_file():
        raise FileNotFoundError(f"--xray: no such file {args.xray}")
    img = torch.from_numpy(np.load(args.xray)).float()
    if args.transmission:
        from mvxray.datasets.intensity import line_integral_from_transmission

        img = line_integral_from_transmission(img)
    if img.dim() == 3 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 2 or tuple(img.shape) != (int(geo["height"]), int(geo["width"])):
        raise ValueError(
            f"--xray: expected an image of shape ({geo['height']}, {geo['width']}) as in "
            f"--geometry, found {tuple(img.shape)}"
        )
    K = torch.tensor(geo["K"], dtype=torch.float64)
    T0 = torch.tensor(geo["T_cam_from_ct"], dtype=torch.float64)
    model = RayEmbModel.load(args.model)
    volume = _load_ct(args.ct)
    if args.coarse_mm > 0:
        from mvxray.datasets.ct import resample

        volume = resample(volume, args.coarse_mm)
    cfg = dataclasses.replace(
        RegisterConfig(), passes=args.passes, num_landmarks=args.landmarks, seed=args.seed
    )
    r = register_xray(model, volume, img, K, T0, float(geo["pixel_mm"]), cfg)
    T = r.T_cam_from_ct
    seconds = r.seconds
    if args.refine:
        from mvxray.registration.baselines import IntensityConfig, intensity_register

        T, info = intensity_register(
            volume,
            img,
            K,
            T,
            float(geo["pixel_mm"]),
            IntensityConfig(iterations=40, lr_deg=0.3, lr_mm=1.0),
        )
        seconds += info["seconds"]
    out = {
        "T_cam_from_ct": T.tolist(),
        "T_init": T0.tolist(),
        "success": bool(r.success),
        "inliers": int(r.inliers.sum()),
        "landmarks": int(r.points_ct.shape[0]),
        "seconds": seconds,
    }
    atomic_write_json(args.out, out, indent=2)
    status = "ok" if r.success else "FAILED (initial pose kept)"
    print(
        f"registration {status}: {out['inliers']}/{out['landmarks']} inliers, {seconds:.1f} s -> {args.out}"
    )
    return 0 if r.success else 2
