"""Multi-view-consistent 2D detections (:class:`MultiViewDetector`)."""

from __future__ import annotations

import pytest
import torch

from mvxray.datasets.base import MultiViewSample
from mvxray.detectors2d import HeatmapDetector, predict_sample
from mvxray.detectors2d import build as build_detector
from mvxray.detectors2d.base import Detections2D, detector_id
from mvxray.detectors2d.multiview import MultiViewDetector, rescoring_lifter
from mvxray.detectors2d.oracle import OracleDetector
from mvxray.geometry import Rig, box3d_from_center_size, box_iou_2d, project_boxes3d
from mvxray.lifting import build
from mvxray.lifting.fpr import FPRVotingLifter

from ..lifting.conftest import StoredDetector, make_scene


def _scene() -> MultiViewSample:
    rig = Rig.circular(6, 300.0, 600.0, 96, 96, 3.0)
    centres = torch.tensor([[-15.0, 10.0, 5.0], [12.0, -8.0, -10.0]], dtype=torch.float64)
    b3 = box3d_from_center_size(centres, torch.tensor([[8.0, 10.0, 9.0], [12.0, 9.0, 10.0]]))
    b2, vis = project_boxes3d(b3, rig.K, rig.T_cam_from_ct, 96, 96)
    return MultiViewSample(
        torch.zeros(6, 1, 96, 96), rig, b3.float(), b2.float(), vis, torch.zeros(2).long()
    )


def test_missed_views_are_filled_and_single_view_clutter_is_removed() -> None:
    sample = _scene()
    base = OracleDetector(jitter_px=0.3, miss_rate=0.25, fp_per_image=2.0, seed=1)
    raw = predict_sample(base, sample)
    assert sum(len(d) for d in raw) != 12  # the base misses some boxes and adds clutter
    lifter = build("voting", region_mm=(-40.0, -40.0, -40.0, 40.0, 40.0, 40.0))
    out = predict_sample(MultiViewDetector(base, lifter), sample)
    assert len(out) == 6
    for v, d in enumerate(out):
        assert len(d) >= 2 and bool((d.scores[:-1] >= d.scores[1:]).all())
        # The two best boxes of every view are the two indications, also where the base
        # missed them; single-view clutter ranks below.
        iou = box_iou_2d(sample.boxes2d[v].double(), d.boxes[:2].double())
        assert float(iou.amax(1).min()) > 0.6, (v, iou)


def test_projected_boxes_keep_the_size_of_anisotropic_indications() -> None:
    # Boxes 8 × 10 × 9 and 12 × 9 × 10 mm: a cube of the median back-projected size would be
    # too wide in some views and too narrow in others; the default lifter fits each extent.
    sample = _scene()
    region = {"region_mm": (-40.0, -40.0, -40.0, 40.0, 40.0, 40.0)}

    def worst_iou(lifter: object) -> float:
        out = predict_sample(MultiViewDetector(OracleDetector(), lifter), sample)
        return min(
            float(box_iou_2d(sample.boxes2d[v].double(), d.boxes[:2].double()).amax(1).min())
            for v, d in enumerate(out)
        )

    assert worst_iou(None) > 0.9  # the default: voting with fit_box
    assert worst_iou(build("voting", fit_box=True, **region)) > 0.9
    assert worst_iou(build("voting", **region)) < 0.85


def test_the_base_runs_with_a_lower_threshold_sharing_its_network() -> None:
    torch.manual_seed(0)
    base = build_detector("faster_rcnn", backbone="resnet18_fpn", score_thresh=0.6)
    images = torch.rand(1, 1, 64, 64)
    relaxed = MultiViewDetector(base)._relaxed_base()
    assert relaxed.model is base.model and base.config.score_thresh == 0.6
    assert (relaxed.config.score_thresh, relaxed.config.detections_per_img) == (1e-3, 300)
    strict, loose = base.predict(images)[0], relaxed.predict(images)[0]
    # An untrained head scores about 0.5: none pass 0.6, many pass 0.001.
    assert len(strict) == 0 and len(loose) > 0 and float(loose.scores.min()) >= 1e-3
    assert len(base.predict(images)[0]) == 0  # the base is unchanged afterwards
    assert MultiViewDetector(base, base_score_thresh=None)._relaxed_base() is base


def test_needs_the_rig() -> None:
    det = MultiViewDetector(OracleDetector())
    assert det.name == "oracle+multiview"
    with pytest.raises(TypeError, match="predict_sample"):
        det.predict(torch.zeros(2, 1, 32, 32))


@pytest.mark.parametrize("input_size", [None, 32])
def test_heatmap_detector_returns_its_dense_heatmap_at_view_size(input_size) -> None:
    det = HeatmapDetector(widths=(8, 16), input_size=input_size)
    dets = det.predict(torch.rand(2, 1, 48, 48))
    for d in dets:
        assert d.heatmap is not None and d.heatmap.shape == (48, 48)
        assert float(d.heatmap.min()) >= 0.0 and float(d.heatmap.max()) <= 1.0


def _clutter_scenes(n: int) -> list[tuple[MultiViewSample, list[Detections2D]]]:
    """Two indications (exact boxes, score 0.3, every view) and two distractors consistent in 3D
    (boxes 3× as large, score 0.45): the vote ranks the distractors first. Centres >= 20 mm apart."""
    rig = Rig.circular(6, 300.0, 600.0, 96, 96, 3.0)
    out, seed = [], 20
    while len(out) < n:
        seed += 1
        s = make_scene(rig, 4, seed=seed, spread_mm=30.0)
        c = (s.boxes3d[:, :3] + s.boxes3d[:, 3:]) / 2
        if float((torch.cdist(c, c) + 1e3 * torch.eye(4)).min()) < 20.0:
            continue
        mid, half = (
            (s.boxes2d[..., :2] + s.boxes2d[..., 2:]) / 2,
            s.boxes2d[..., 2:] - s.boxes2d[..., :2],
        )
        big = torch.cat([mid - 1.5 * half, mid + 1.5 * half], -1)
        boxes = torch.cat([s.boxes2d[:, :2], big[:, 2:]], 1)
        dets = [
            Detections2D(b, torch.tensor([0.3, 0.3, 0.45, 0.45]), torch.zeros(4).long())
            for b in boxes
        ]
        keep = slice(0, 2)
        truth = MultiViewSample(
            s.images,
            rig,
            s.boxes3d[keep],
            s.boxes2d[:, keep],
            s.visible2d[:, keep],
            s.labels[keep],
            s.case_id,
        )
        out.append((truth, dets))
    return out


def test_a_fitted_rescoring_lifter_ranks_the_base_detectors_clutter_down() -> None:
    scenes = _clutter_scenes(10)
    train, test = scenes[:6], scenes[6:]
    mv = MultiViewDetector(
        StoredDetector({s.case_id: d for s, d in scenes}),
        rescoring_lifter(region_mm=(-40.0,) * 3 + (40.0,) * 3),
    )

    def views_with_both_first(pairs: list) -> int:
        """Views whose two best boxes are centred within 2 px of the two indications."""
        n = 0
        for sample, _ in pairs:
            for v, d in enumerate(predict_sample(mv, sample)):
                gt = (sample.boxes2d[v, :, :2] + sample.boxes2d[v, :, 2:]) / 2
                top = (d.boxes[:2, :2] + d.boxes[:2, 2:]) / 2
                n += int(len(top) == 2 and float(torch.cdist(gt, top).amin(1).max()) < 2.0)
        return n

    assert views_with_both_first(test) == 0  # the vote alone: the distractors come first
    stats = mv.fit_lifter([s for s, _ in train])
    assert stats["positives"] == 12 and stats["candidates"] > 12
    assert views_with_both_first(test) == 4 * 6  # every view of the 4 unseen scenes


def test_fit_lifter_refuses_a_lifter_that_does_not_learn() -> None:
    with pytest.raises(TypeError, match="voting_fpr"):
        MultiViewDetector(OracleDetector()).fit_lifter([_scene()])


def test_detector_id_follows_the_weights_not_the_output_thresholds(tmp_path) -> None:
    det = HeatmapDetector(widths=(4, 8))
    det.save(tmp_path / "det.pt")
    same = HeatmapDetector.load(tmp_path / "det.pt")
    assert detector_id(same) == detector_id(det)
    assert detector_id(MultiViewDetector(det)._relaxed_base()) == detector_id(det)  # 1e-3
    with torch.no_grad():
        next(same.model.parameters()).view(-1)[0] += 1e-3  # one weight of one layer
    assert detector_id(same) != detector_id(det)
    assert detector_id(HeatmapDetector(widths=(4, 8), tta=not det.config.tta)) != detector_id(det)


def test_a_rescorer_fitted_on_one_detector_refuses_another(tmp_path) -> None:
    scenes = _clutter_scenes(3)
    stored = StoredDetector({s.case_id: d for s, d in scenes})
    mv = MultiViewDetector(stored, rescoring_lifter(region_mm=(-40.0,) * 3 + (40.0,) * 3))
    mv.fit_lifter([s for s, _ in scenes])
    mv.lifter.save(tmp_path / "rescorer.pt")
    again = FPRVotingLifter.load(tmp_path / "rescorer.pt")
    assert again.detector_id == mv.lifter.detector_id == detector_id(stored)
    MultiViewDetector(stored, again)  # the detector it was fitted on
    with pytest.raises(
        ValueError, match=r"fitted on the output of detector stored:.*given oracle:"
    ):
        MultiViewDetector(OracleDetector(), again)
