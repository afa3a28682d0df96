"""``mvxray detect``: run a saved 2D detector on every case of a dataset and score it.

Writes ``<case_id>.json`` per case and ``metrics.json``: 2D AP@0.5 and FROC recall at
0.5 / 1 / 2 / 4 false positives per image against the dataset's visible ground-truth boxes,
overall and per view index (:class:`mvxray.benchmarks.metrics2d.DetectionEvaluator`). With
``--multiview`` the detector is wrapped in :class:`mvxray.detectors2d.multiview.MultiViewDetector`;
``--rescore`` re-scores its vote with a classifier of the detector's own clutter (``voting_fpr``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mvxray.cli import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="detect indications in every view of a dataset with a saved 2D detector",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (with dataset.json)")
    p.add_argument(
        "--model",
        required=True,
        help="detector file (from train-2d / save), 'demo' (the shipped one) or a training-free name",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output folder: one <case_id>.json per case"
    )
    p.add_argument("--split", default="all", help="split to run on (all, train, val, test)")
    p.add_argument(
        "--multiview",
        action="store_true",
        help="make the detections consistent across each case's views (voting lifter, then "
        "the 3D indications projected into every view; see docs/detectors.md)",
    )
    p.add_argument(
        "--rescore",
        type=Path,
        help="with --multiview: re-score the vote with a classifier (voting_fpr). A dataset "
        "folder: fitted first on the detector's output on its train split (minutes) and saved "
        "as OUT/rescorer.pt; a file: a rescorer.pt saved before",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from mvxray import detectors2d
    from mvxray.benchmarks.metrics2d import DetectionEvaluator
    from mvxray.cli.lift import resolve_detector
    from mvxray.datasets.torchdata import MultiViewDataset
    from mvxray.detectors2d.io import write_detections
    from mvxray.io import atomic_write_json

    if args.threads:
        torch.set_num_threads(args.threads)
    det = resolve_detector(args.model, {}, flag="--model")
    if args.rescore and not args.multiview:
        raise ValueError("--rescore re-scores the multi-view vote: add --multiview")
    if args.multiview:
        det = _multiview(det, args)
    ds = MultiViewDataset(args.data, args.split)
    n_boxes, evaluator = 0, DetectionEvaluator()
    for i in tqdm(range(len(ds)), desc=f"detect {det.name}", disable=args.no_progress):
        sample = ds[i]
        dets = detectors2d.predict_sample(det, sample)
        evaluator.add_sample(dets, sample.boxes2d, sample.visible2d)
        n_boxes += sum(len(d) for d in dets)
        write_detections(
            args.out / f"{ds.case_ids[i]}.json",
            dets,
            sample.case_id or ds.case_ids[i],
            detector=det.name,
            model=str(args.model),
        )
    metrics = evaluator.compute(per_view=True)
    atomic_write_json(args.out / "metrics.json", metrics)
    print(
        f"{len(ds)} case(s), {n_boxes} detection(s) → {args.out}; 2D recall at 1 FP/image "
        f"{metrics['recall@1fp']:.3f}, AP@0.5 {metrics['ap50']:.3f} ({int(metrics['n_gt'])} boxes)"
    )
    return 0


def _multiview(det: object, args: argparse.Namespace) -> object:
    """``det`` made multi-view; with ``--rescore``, its vote re-scored (fitted or loaded)."""
    from mvxray.detectors2d.multiview import MultiViewDetector, rescoring_lifter

    if args.rescore is None:
        return MultiViewDetector(det)
    if args.rescore.is_file():
        from mvxray.lifting.fpr import FPRVotingLifter

        return MultiViewDetector(det, FPRVotingLifter.load(args.rescore))
    if not (args.rescore / "dataset.json").is_file():
        raise FileNotFoundError(
            f"--rescore {args.rescore}: neither a rescorer.pt nor a dataset folder (no dataset.json)"
        )
    from mvxray.datasets.torchdata import MultiViewDataset

    mv = MultiViewDetector(det, rescoring_lifter())
    fit = mv.fit_lifter(MultiViewDataset(args.rescore, "train"), progress=not args.no_progress)
    mv.lifter.save(args.out / "rescorer.pt")
    print(
        f"rescorer fitted on {int(fit['candidates'])} candidates ({int(fit['positives'])} "
        f"indications) of {args.rescore} → {args.out / 'rescorer.pt'}"
    )
    return mv
