"""mvxray's Python API end to end, mirroring ``mvxray demo``:

render multi-view X-rays of a chest CT with nodules, detect in 2D, lift to 3D, report mm errors.

    python examples/quickstart.py [--detector oracle|log_blob|PATH] [--size 128]
"""

from __future__ import annotations

import argparse

import torch

from mvxray import datasets, detectors2d, lifting
from mvxray.datasets.base import MultiViewSample
from mvxray.geometry import Rig, box3d_center_size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detector", default="oracle", help="detector name or checkpoint path")
    parser.add_argument("--size", type=int, default=128, help="detector size, px")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rig = Rig.seed(size=args.size)  # seed 000: 10 views, 36° apart, source 300 mm from the centre
    case = datasets.PHANTOMS["chest"](args.seed)  # real chest CT + real LIDC nodule shapes
    rendered = datasets.render_case(case.volume, rig, case.boxes3d)  # DRRs + exact 2D truth
    sample = MultiViewSample(
        rendered.images,
        rig,
        case.boxes3d,
        rendered.boxes2d,
        rendered.visible2d,
        case.labels,
        "quickstart",
    )

    if args.detector in detectors2d.DETECTORS:
        det = detectors2d.build(
            args.detector, **({"jitter_px": 1.0} if args.detector == "oracle" else {})
        )
    else:
        det = detectors2d.load(args.detector)
    lifter = lifting.build("triangulation")
    lifted = lifter.lift(sample, detectors2d.predict_sample(det, sample))

    true_c, true_s = box3d_center_size(sample.boxes3d)
    found_c, _ = box3d_center_size(lifted.boxes3d.double())
    print(f"{len(sample.boxes3d)} nodules, {len(lifted)} found boxes")
    for m in range(true_c.shape[0]):
        if found_c.shape[0] == 0:
            print(f"nodule {m}: missed")
            continue
        d = torch.linalg.norm(found_c - true_c[m], dim=-1)
        k = int(d.argmin())
        print(
            f"nodule {m} ({float(true_s[m].mean()):.1f} mm): nearest found box {float(d[k]):.2f} mm away, "
            f"score {float(lifted.scores[k]):.2f}, seen in views {torch.nonzero(lifted.support[k]).flatten().tolist()}"
        )


if __name__ == "__main__":
    main()
