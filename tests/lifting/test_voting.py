"""The ``voting`` lifter: dense 3D votes of the per-view evidence."""

from __future__ import annotations

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d.base import Detections2D
from mvxray.geometry import Rig, box3d_center_size, project_points
from mvxray.geometry._checks import ShapeError
from mvxray.lifting import build
from mvxray.lifting.voting import VotingConfig, evidence_maps, vote_peaks

from .conftest import make_scene, oracle_detections

REGION = (-40.0, -40.0, -40.0, 40.0, 40.0, 40.0)


def _rig() -> Rig:
    return Rig.circular(6, 300.0, 600.0, 96, 96, 3.0)


def _max0(t: torch.Tensor) -> float:
    return float(t.max()) if len(t) else 0.0


def _nearest_errors(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per true box, the distance (mm) to the nearest found centre."""
    fc, _ = box3d_center_size(found.double())
    tc, _ = box3d_center_size(truth.double())
    return torch.cdist(tc, fc).amin(1)


def test_oracle_boxes_give_the_true_centres_first() -> None:
    sample = make_scene(_rig(), 3, seed=5, spread_mm=25.0)  # centres ≥ 26 mm apart
    out = build("voting", region_mm=REGION).lift(sample, oracle_detections(sample))
    assert len(out) >= 3
    err = _nearest_errors(out.boxes3d[:3], sample.boxes3d)
    assert float(err.max()) < 1.5, err  # 2 mm voxels, sub-voxel peaks
    assert bool(out.support[:3].all())  # every view supports every true box
    assert float(out.scores[2]) > 0.5 > _max0(out.scores[3:])


def test_single_view_clutter_is_outvoted_by_faint_consistent_evidence() -> None:
    """Faint (0.3) blobs at the true projections in every view beat strong (1.0) blobs that
    only one view has — the case a per-view threshold gets wrong."""
    rig = _rig()
    sample = make_scene(rig, 2, seed=7, spread_mm=25.0)
    centres, _ = box3d_center_size(sample.boxes3d.double())
    uv, _ = project_points(centres, rig.K, rig.T_cam_from_ct)  # (V, 2, 2)
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")

    def blob(c: torch.Tensor, amp: float) -> torch.Tensor:
        return amp * torch.exp(-((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / (2 * 1.5**2))

    dets = []
    for v in range(rig.num_views):
        heat = torch.zeros(96, 96)
        for m in range(2):
            heat = torch.maximum(heat, blob(uv[v, m].float(), 0.3))
        for _ in range(3):  # clutter: strong, in this view only
            heat = torch.maximum(heat, blob(torch.rand(2, generator=g) * 80 + 8, 1.0))
        dets.append(Detections2D(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long(), heat))
    out = build("voting", region_mm=REGION).lift(sample, dets)
    err = _nearest_errors(out.boxes3d[:2], sample.boxes3d)
    assert float(err.max()) < 2.0, err
    # Clutter is strong in one view of six: its vote stays below the faint true indications.
    assert float(out.scores[1]) > _max0(out.scores[2:])


def test_box_detections_are_splatted_with_their_scores() -> None:
    d = Detections2D(torch.tensor([[10.0, 10, 20, 20]]), torch.tensor([0.6]), torch.zeros(1).long())
    m = evidence_maps([d, Detections2D.empty()], 32, 32)
    assert m.shape == (2, 32, 32)
    assert float(m[0].max()) == pytest.approx(0.6 * float(torch.exp(torch.tensor(-0.5 / 12.5))))
    assert int(m[0].flatten().argmax()) in {14 * 32 + 14, 14 * 32 + 15, 15 * 32 + 14, 15 * 32 + 15}
    assert float(m[1].abs().max()) == 0.0


def test_peaks_are_refined_below_the_voxel() -> None:
    axes = [torch.arange(5, dtype=torch.float32) * 2.0 for _ in range(3)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    true = torch.tensor([4.6, 3.5, 5.2])
    score = -((grid - true) ** 2).sum(-1)  # a quadratic bowl: the parabola vertex is exact
    pts, top = vote_peaks(score, axes, 1, 1)
    assert torch.allclose(pts[0], true, atol=1e-4)
    assert float(top[0]) == float(score.max())


def test_oracle_with_misses_and_false_positives() -> None:
    sample = make_scene(_rig(), 3, seed=11, spread_mm=25.0)
    dets = oracle_detections(sample, jitter_px=0.5, drop=0.15, fp_per_view=2, seed=3)
    out = build("voting", region_mm=REGION).lift(sample, dets)
    err = _nearest_errors(out.boxes3d[:3], sample.boxes3d)
    assert float(err.max()) < 2.5, err


def test_region_defaults_to_the_volume_box_in_provenance() -> None:
    sample = make_scene(_rig(), 1, seed=2, spread_mm=10.0)
    lifter = build("voting")
    box = [-30.0, -30.0, -30.0, 30.0, 30.0, 30.0]
    with_box = MultiViewSample(
        sample.images,
        sample.rig,
        sample.boxes3d,
        sample.boxes2d,
        sample.visible2d,
        sample.labels,
        meta={"provenance": {"volume_box_ct_mm": box}},
    )
    out = lifter.lift(with_box, oracle_detections(sample))
    centres, _ = box3d_center_size(out.boxes3d.double())
    assert bool((centres.abs() <= 30.0).all())
    assert float(_nearest_errors(out.boxes3d[:1], sample.boxes3d)[0]) < 1.5


def test_bad_input_is_refused_by_name() -> None:
    sample = make_scene(_rig(), 1, seed=1)
    lifter = build("voting", region_mm=REGION)
    with pytest.raises(ShapeError, match="one entry per view"):
        lifter.lift(sample, [Detections2D.empty()])
    wrong = Detections2D(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0).long(), torch.zeros(8, 8)
    )
    with pytest.raises(ShapeError, match=r"heatmap: expected \(96, 96\), found \(8, 8\)"):
        lifter.lift(sample, [wrong] * 6)
    with pytest.raises(ValueError, match="step_mm and eps"):
        VotingConfig(step_mm=0.0)
    with pytest.raises(ValueError, match="min_view_frac"):
        VotingConfig(min_view_frac=1.5)
    with pytest.raises(ShapeError, match="region_mm: expected 6"):
        VotingConfig(region_mm=(0.0, 1.0))  # type: ignore[arg-type]
