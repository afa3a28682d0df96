"""``mvxray detect``: run a saved 2D detector on every case of a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="detect indications in every view of a dataset with a saved 2D detector",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    p.add_argument("--model", type=Path, required=True, help="detector file (from train-2d / save)")
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: one <case_id>.json per case"
    )
    p.add_argument("--split", default="all", help="split to run on (all, train, val, test)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from mvxray import detectors2d
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.detectors2d.io import write_detections

    if args.threads:
        torch.set_num_threads(args.threads)
    det = detectors2d.load(args.model)
    ds = MultiViewDataset(args.data, args.split)
    n_boxes = 0
    for i in tqdm(range(len(ds)), desc=f"detect {det.name}", disable=args.no_progress):
        sample = ds[i]
        dets = detectors2d.predict_sample(det, sample)
        n_boxes += sum(len(d) for d in dets)
        write_detections(
            args.out / f"{ds.case_ids[i]}.json",
            dets,
            sample.case_id or ds.case_ids[i],
            detector=det.name,
            model=str(args.model),
        )
    print(f"{len(ds)} case(s), {n_boxes} detection(s) → {args.out}")
    return 0
