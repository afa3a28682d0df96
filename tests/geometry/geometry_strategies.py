"""Hypothesis strategies shared by the geometry tests: random rigs and points in front of them.

Poses and points come from a drawn integer seed (a torch generator) so that an example stays
small for hypothesis whatever the number of views.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from mvxray.geometry import Rig, look_at

F64 = torch.float64


def _units(g: torch.Generator, n: int) -> torch.Tensor:
    """``(n, 3)`` random unit vectors."""
    v = torch.randn(n, 3, generator=g, dtype=F64)
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


@st.composite
def rigs(draw: st.DrawFn, min_views: int = 2, max_views: int = 6) -> Rig:
    """Circular (any axis, off-centre principal point), C-arm, or random look-at rigs (random
    targets near the isocentre, fx != fy, off-centre principal point); non-square detectors."""
    kind = draw(st.sampled_from(["circular", "carm", "look_at"]))
    V = draw(st.integers(min_views, max_views))
    H = draw(st.integers(24, 700))
    W = draw(st.integers(24, 700))
    sid = draw(st.floats(200.0, 900.0))
    sdd = sid * draw(st.floats(1.2, 2.5))
    pix = draw(st.floats(0.2, 2.0))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "circular":
        return Rig.circular(
            V,
            sid,
            sdd,
            H,
            W,
            pix,
            start_deg=draw(st.floats(-180.0, 180.0)),
            # two views 180° apart see a point near the isocentre along one line (ill-posed)
            arc_deg=draw(st.floats(30.0, 360.0 if V > 2 else 270.0)),
            axis=tuple(_units(g, 1)[0].tolist()),
            offset_px=(draw(st.floats(-20.0, 20.0)), draw(st.floats(-20.0, 20.0))),
        )
    if kind == "carm":
        lao = (torch.rand(V, generator=g, dtype=F64) * 180 - 90).tolist()
        cra = (torch.rand(V, generator=g, dtype=F64) * 90 - 45).tolist()
        return Rig.carm(lao, cra, sid, sdd, H, W, pix)
    d = _units(g, V)
    up = _units(g, V)
    # Keep "up" away from the viewing direction (look_at refuses parallel vectors).
    bad = torch.linalg.cross(up, d).norm(dim=-1) < 0.2
    up[bad] = torch.linalg.cross(
        d[bad], torch.tensor([[0.6, 0.0, 0.8]], dtype=F64).expand(int(bad.sum()), 3)
    )
    target = (torch.rand(V, 3, generator=g, dtype=F64) - 0.5) * 40
    T = look_at(sid * d, target, up)
    K = torch.zeros(V, 3, 3, dtype=F64)
    K[:, 0, 0] = sdd / pix
    K[:, 1, 1] = sdd / pix * draw(st.floats(0.8, 1.25))
    K[:, 0, 2] = W / 2 + draw(st.floats(-30.0, 30.0))
    K[:, 1, 2] = H / 2 + draw(st.floats(-30.0, 30.0))
    K[:, 2, 2] = 1.0
    return Rig.from_poses(K, T, H, W, pix)


@st.composite
def points_near_isocentre(draw: st.DrawFn, rig: Rig, max_n: int = 8) -> torch.Tensor:
    """``(N, 3)`` points within 0.3 SID of the CT origin: in front of every source."""
    sid = float(rig.source_ct.norm(dim=-1).min())
    n = draw(st.integers(1, max_n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    p = _units(g, n) * (torch.rand(n, 1, generator=g, dtype=F64) * 0.3 * sid)
    return p
