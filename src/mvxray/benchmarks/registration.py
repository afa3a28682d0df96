"""Registration benchmark (seed 002's table) on the embedded chest CT.

``python -m mvxray.benchmarks.registration [--size 128] [--train-minutes 15] ...``

1. The chest phantom (``PHANTOMS["chest"]``); a coarser copy (``--coarse-mm``) renders the
   training bank and the templates, the full-resolution volume renders the query X-rays (so
   queries and templates never come from the same voxels).
2. Training bank: the seed rig's 10 views, each perturbed ``--bank-reps`` times by up to
   ±15° / ±30 mm (seed 1). RayEmb and the fixed-landmark heatmap baseline train on it for
   the same wall-time budget (or load ``--model`` / cached weights).
3. Queries: the seed rig's views perturbed by up to ±10° / ±20 mm (seed 2, never seen in
   training); every method starts from the unperturbed seed view.
4. mTRE over 200 body points, percentiles, GFR@10 / GFR@5, 2D landmark error, seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from mvxray.cli import HelpFormatter
from mvxray.io import atomic_write_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mvxray.benchmarks.registration",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("--size", type=int, default=128, help="image size, px")
    p.add_argument("--coarse-mm", type=float, default=2.5, help="voxel of the template CT, mm")
    p.add_argument("--bank-reps", type=int, default=12, help="perturbed copies per seed view")
    p.add_argument("--train-minutes", type=float, default=15.0, help="training budget each")
    p.add_argument("--queries-per-view", type=int, default=1, help="perturbed poses per view")
    p.add_argument("--query-seed", type=int, default=2, help="seed of the query poses")
    p.add_argument("--limit", type=int, default=None, help="use only the first N queries")
    p.add_argument("--max-rot-deg", type=float, default=10.0, help="largest perturbation, deg")
    p.add_argument("--max-trans-mm", type=float, default=20.0, help="largest shift, mm")
    p.add_argument("--model", type=Path, default=None, help="trained RayEmb model (.pt)")
    p.add_argument("--fixed-model", type=Path, default=None, help="trained fixed-landmark model")
    p.add_argument("--intensity-iters", type=int, default=60, help="intensity-only iterations")
    p.add_argument("--finetune-minutes", type=float, default=0.0, help="keep training --model")
    p.add_argument("--passes", type=int, default=3, help="RayEmb registration passes")
    p.add_argument("--landmarks", type=int, default=400, help="RayEmb 3D landmarks sampled")
    p.add_argument("--top-k", type=int, default=200, help="most confident matches kept")
    p.add_argument("--threshold-px", type=float, default=1.5, help="RANSAC inlier threshold")
    p.add_argument("--skip", nargs="*", default=[], help="methods to skip")
    p.add_argument("--refine", action="store_true", help="also RayEmb + intensity refinement")
    p.add_argument("--out", type=Path, default=None, help="write results JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--lifter-cases",
        type=int,
        default=0,
        help="also lift oracle detections of this many chest cases with the rayemb lifter",
    )
    return p


def _atomic_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=2)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints the table and returns 0."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from mvxray.datasets.ct import resample
    from mvxray.datasets.phantoms import PHANTOMS
    from mvxray.datasets.render import render_views
    from mvxray.geometry import Rig
    from mvxray.lifting.rayemb.encoder import EncoderConfig
    from mvxray.lifting.rayemb.model import RayEmbConfig, RayEmbModel
    from mvxray.lifting.rayemb.poses import perturb_poses, pose_error
    from mvxray.lifting.rayemb.train import TrainConfig, build_bank, fit_rayemb, sample_body_points
    from mvxray.paths import cache_dir
    from mvxray.registration.baselines import (
        FixedLandmarkModel,
        IntensityConfig,
        default_landmarks,
        fit_fixed_landmarks,
        fixed_landmark_register,
        intensity_register,
    )
    from mvxray.registration.metrics import landmark_error_px, mtre, summarize
    from mvxray.registration.pnp import RansacConfig
    from mvxray.registration.register import RegisterConfig, register_xray

    t_start = time.perf_counter()
    log = print
    case = PHANTOMS["chest"](0, vary_anatomy=False)
    fine = case.volume
    coarse = resample(fine, args.coarse_mm)
    log(f"chest CT {tuple(fine.data.shape)}; template CT {tuple(coarse.data.shape)}")
    S = args.size
    base = Rig.seed(S)
    K = base.K[0]
    pm = float(base.pixel_mm[0])

    def rig_of(T: torch.Tensor) -> Rig:
        return Rig.from_poses(K.expand(len(T), 3, 3).clone(), T, S, S, pm)

    cache = cache_dir() / "rayemb"
    tag = f"chest_s{S}_c{args.coarse_mm:g}_r{args.bank_reps}"
    # ---------------------------------------------------------------- bank
    bank_path = cache / f"bank_{tag}.pt"
    g = torch.Generator().manual_seed(1)
    Tb = torch.cat(
        [base.T_cam_from_ct]
        + [perturb_poses(base.T_cam_from_ct, 15.0, 30.0, g) for _ in range(args.bank_reps)]
    )
    t0 = time.perf_counter()
    cached = torch.load(bank_path, weights_only=True) if bank_path.is_file() else None

    def renderer(vol, rig):
        if cached is not None and torch.equal(cached["T"], rig.T_cam_from_ct):
            return cached["images"]
        return render_views(vol, rig)

    bank = build_bank(coarse, rig_of(Tb), renderer, num_points=4096, hu_min=150.0)
    log(f"bank: {len(Tb)} views ready in {time.perf_counter() - t0:.0f} s")
    cache.mkdir(parents=True, exist_ok=True)
    if cached is None:
        torch.save({"images": bank.images, "T": Tb}, bank_path)
    # ---------------------------------------------------------------- models
    train_info: dict[str, Any] = {}
    minutes = args.train_minutes
    if args.model is not None:
        model = RayEmbModel.load(args.model)
        minutes = args.finetune_minutes
    else:
        model = RayEmbModel(RayEmbConfig(EncoderConfig(out_stride_log2=1)))
    if minutes > 0:
        train_info["rayemb"] = fit_rayemb(
            model,
            bank,
            TrainConfig(
                steps=100_000,
                queries_per_step=1,
                points_per_query=96,
                max_minutes=minutes,
                lr=3e-3 if args.model is None else 1e-3,
            ),
            log=log,
        )
        model.save(cache / f"rayemb_{tag}{'_ft' if args.model is not None else ''}.pt")
    log(f"rayemb train: {train_info.get('rayemb', 'loaded')}")
    fixed = None
    if "fixed" not in args.skip:
        if args.fixed_model is not None:
            payload = torch.load(args.fixed_model, weights_only=True)
            fixed = FixedLandmarkModel(payload["landmarks_ct"], EncoderConfig(out_stride_log2=1))
            fixed.load_state_dict(payload["state_dict"])
            fixed.eval()
        else:
            fixed = FixedLandmarkModel(
                default_landmarks(coarse, 48), EncoderConfig(out_stride_log2=1)
            )
            train_info["fixed"] = fit_fixed_landmarks(
                fixed, bank, steps=100_000, batch=4, max_minutes=args.train_minutes, log=log
            )
            torch.save(
                {"landmarks_ct": fixed.landmarks_ct, "state_dict": fixed.state_dict()},
                cache / f"fixed_{tag}.pt",
            )
        log(f"fixed-landmark train: {train_info.get('fixed', 'loaded')}")
    # ---------------------------------------------------------------- queries
    gq = torch.Generator().manual_seed(args.query_seed)
    T_init = base.T_cam_from_ct.repeat(args.queries_per_view, 1, 1)
    T_gt = perturb_poses(T_init, args.max_rot_deg, args.max_trans_mm, gq)
    if args.limit is not None:
        T_init, T_gt = T_init[: args.limit], T_gt[: args.limit]
    t0 = time.perf_counter()
    xrays = render_views(fine, rig_of(T_gt)).cpu()
    log(
        f"queries: {len(T_gt)} X-rays rendered from the fine CT in {time.perf_counter() - t0:.0f} s"
    )
    targets = sample_body_points(fine, 200, -300.0, torch.Generator().manual_seed(3))

    def coarse_render(vol, rig):  # templates from the coarse CT, whatever volume is passed
        return render_views(coarse, rig)

    methods: dict[str, list[dict[str, float]]] = {"initial": []}
    reg_cfg = RegisterConfig(
        num_landmarks=args.landmarks,
        top_k=args.top_k,
        passes=args.passes,
        ransac=RansacConfig(threshold_px=args.threshold_px),
    )
    icfg = IntensityConfig(iterations=args.intensity_iters)
    for q in range(len(T_gt)):
        rec = {"initial": T_init[q]}
        row: dict[str, dict[str, float]] = {}
        if "rayemb" not in args.skip:
            r = register_xray(model, coarse, xrays[q], K, T_init[q], pm, reg_cfg, coarse_render)
            rec["rayemb"] = r.T_cam_from_ct
            uv_gt, _, _ = rig_of(T_gt[q : q + 1]).project(r.points_ct)
            lm = landmark_error_px(r.uv, uv_gt[0]) if len(r.uv) else torch.zeros(1)
            row["rayemb"] = {"seconds": r.seconds, "lm_px_median": float(lm.median())}
            if args.refine:
                T_ref, info = intensity_register(
                    coarse,
                    xrays[q],
                    K,
                    r.T_cam_from_ct,
                    pm,
                    IntensityConfig(
                        iterations=max(10, args.intensity_iters // 2), lr_deg=0.3, lr_mm=1.0
                    ),
                )
                rec["rayemb+intensity"] = T_ref
                row["rayemb+intensity"] = {"seconds": r.seconds + info["seconds"]}
        if "intensity" not in args.skip:
            T_i, info = intensity_register(coarse, xrays[q], K, T_init[q], pm, icfg)
            rec["intensity"] = T_i
            row["intensity"] = {"seconds": info["seconds"]}
        if fixed is not None:
            t0 = time.perf_counter()
            try:
                res = fixed_landmark_register(fixed, xrays[q], K, reg_cfg.ransac)
                T_f = res.T_cam_from_ct
            except ValueError:
                T_f = T_init[q].clone()
            uv_f, _ = fixed.predict(xrays[q])
            uv_gt, _, vis = rig_of(T_gt[q : q + 1]).project(fixed.landmarks_ct)
            lm = landmark_error_px(uv_f[vis[0]], uv_gt[0][vis[0]])
            rec["fixed"] = T_f
            row["fixed"] = {"seconds": time.perf_counter() - t0, "lm_px_median": float(lm.median())}
        parts = []
        for name, T in rec.items():
            e = float(mtre(T, T_gt[q], targets))
            rot, tr = pose_error(T, T_gt[q])
            d = {"mtre_mm": e, "rot_deg": float(rot), "src_mm": float(tr), **row.get(name, {})}
            methods.setdefault(name, []).append(d)
            parts.append(f"{name} {e:.1f}")
        log(f"query {q + 1}/{len(T_gt)}: mTRE mm  " + "  ".join(parts))
    # ---------------------------------------------------------------- table
    summary: dict[str, dict[str, float]] = {}
    for name, rows in methods.items():
        s = summarize([r["mtre_mm"] for r in rows])
        s["seconds_mean"] = sum(r.get("seconds", 0.0) for r in rows) / len(rows)
        lms = [r["lm_px_median"] for r in rows if "lm_px_median" in r]
        if lms:
            s["lm_px_median"] = float(torch.tensor(lms).median())
        summary[name] = s
    print()
    print(
        f"{'method':<18}{'p25':>8}{'p50':>8}{'p95':>9}{'GFR@10':>8}{'GFR@5':>8}{'2D px':>7}{'s/img':>7}"
    )
    for name, s in summary.items():
        print(
            f"{name:<18}{s['p25']:8.2f}{s['p50']:8.2f}{s['p95']:9.2f}{s['gfr@10']:7.1f}%"
            f"{s['gfr@5']:7.1f}%{s.get('lm_px_median', float('nan')):7.2f}{s['seconds_mean']:7.1f}"
        )
    lifter_out = None
    if args.lifter_cases > 0:
        lifter_out = lifter_oracle(model, args.lifter_cases, S, log)
    total = time.perf_counter() - t_start
    print(f"\n{len(T_gt)} queries at {S} px, total {total:.0f} s")
    if args.out is not None:
        _atomic_json(
            args.out,
            {
                "args": {k: str(v) for k, v in vars(args).items()},
                "train": train_info,
                "summary": summary,
                "per_query": methods,
                "lifter_oracle": lifter_out,
                "seconds": total,
            },
        )
    return 0


def lifter_oracle(
    model: Any, n_cases: int, size: int, log: Any = print, jitter_px: float = 2.0
) -> dict[str, float]:
    """The ``rayemb`` lifter (and ``triangulation`` for reference) on oracle 2D boxes.

    Chest cases (seeds 100…, with anatomy variation) on the seed rig; detections are the
    projected ground-truth boxes of the visible indications (score 1), each coordinate jittered
    by N(0, ``jitter_px``²). ``rayemb_emb_only`` scores depth by the embedding alone
    (``geometric_weight=0``). Reports the median
    distance from each true box centre to the nearest lifted centre (mm), recall at 3D IoU ≥
    0.25 and the number of lifted boxes per true box.
    """
    from mvxray.datasets.base import MultiViewSample
    from mvxray.datasets.phantoms import PHANTOMS
    from mvxray.datasets.render import render_case
    from mvxray.detectors2d.base import Detections2D
    from mvxray.geometry import Rig, box3d_center_size, box_iou_3d
    from mvxray.lifting import build
    from mvxray.lifting.rayemb.lifter import RayEmbLifter, RayEmbLifterConfig

    rig = Rig.seed(size)
    lifters = {
        "rayemb": RayEmbLifter(model=model),
        "rayemb_emb_only": RayEmbLifter(
            RayEmbLifterConfig(model=model.config, geometric_weight=0.0), model
        ),
        "triangulation": build("triangulation"),
    }
    g = torch.Generator().manual_seed(7)
    stats: dict[str, dict[str, list[float]]] = {k: {"d": [], "hit": [], "n": []} for k in lifters}
    for c in range(n_cases):
        case = PHANTOMS["chest"](100 + c)
        rc = render_case(case.volume, rig, case.boxes3d, masks=False)
        sample = MultiViewSample(
            rc.images, rig, case.boxes3d.float(), rc.boxes2d, rc.visible2d, case.labels
        )
        dets = []
        for v in range(rig.num_views):
            b = rc.boxes2d[v][rc.visible2d[v]]
            b = b + jitter_px * torch.randn(b.shape, generator=g)
            dets.append(Detections2D(b, torch.ones(len(b)), torch.zeros(len(b), dtype=torch.long)))
        for name, lifter in lifters.items():
            out = lifter.lift(sample, dets)
            M = case.boxes3d.shape[0]
            stats[name]["n"].append(len(out) / max(1, M))
            if len(out) == 0:
                stats[name]["d"] += [float("inf")] * M
                stats[name]["hit"] += [0.0] * M
                continue
            ct, _ = box3d_center_size(case.boxes3d.double())
            co, _ = box3d_center_size(out.boxes3d.double())
            stats[name]["d"] += torch.cdist(ct, co).min(1).values.tolist()
            iou = box_iou_3d(case.boxes3d.double(), out.boxes3d.double())
            stats[name]["hit"] += (iou.max(1).values >= 0.25).double().tolist()
        log(f"lifter case {c + 1}/{n_cases}: {case.boxes3d.shape[0]} nodules")
    res: dict[str, float] = {}
    for name, st in stats.items():
        res[f"{name}_centre_mm_median"] = float(torch.tensor(st["d"]).median())
        res[f"{name}_recall_iou25"] = 100.0 * sum(st["hit"]) / max(1, len(st["hit"]))
        res[f"{name}_boxes_per_truth"] = sum(st["n"]) / max(1, len(st["n"]))
        print(
            f"lifter {name:<14} centre error median {res[f'{name}_centre_mm_median']:.1f} mm, "
            f"recall@IoU0.25 {res[f'{name}_recall_iou25']:.0f} %, "
            f"boxes/truth {res[f'{name}_boxes_per_truth']:.2f}"
        )
    return res


if __name__ == "__main__":
    raise SystemExit(main())
