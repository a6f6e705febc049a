"""Tests of calcirad.stability: ICC(3,1), mask perturbations, extraction under perturbation,
the stability table and the modelling stage's ICC filter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from calcirad.errors import ConfigError
from calcirad.features import extract_features
from calcirad.model.feature_sets import drop_unstable
from calcirad.plan import select_subjects
from calcirad.stability import (
    DEFAULT_PERTURBATIONS,
    icc_3_1,
    parse_perturbation,
    perturb_array,
    perturb_mask,
    perturbed_features,
    shift_mm,
    stability_table,
)
from calcirad.steps.model import run_model

PARAMS = Path(__file__).resolve().parents[1] / "config" / "radiomics"

# Shrout & Fleiss (1979), Psychol Bull 86:420, Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array(
    [
        [9, 2, 5, 8],
        [6, 1, 3, 2],
        [8, 4, 6, 8],
        [7, 1, 2, 6],
        [10, 5, 6, 9],
        [6, 2, 4, 7],
    ],
    dtype=float,
)


# --------------------------------------------------------------------------- ICC


def test_icc_matches_shrout_and_fleiss_table_2():
    result = icc_3_1(SHROUT_FLEISS)
    # Published: ICC(3,1) = .71 (Table 4); F = BMS/EMS = 11.24/1.02 = 11.0 on 5 and 15 df.
    assert round(result.icc, 2) == 0.71
    assert result.f == pytest.approx(11.027, abs=1e-3)
    assert (result.df1, result.df2, result.n_targets, result.n_raters) == (5, 15, 6, 4)
    # Exact F interval (Shrout & Fleiss Table 5; R psych::ICC prints 0.34 - 0.95 for these data).
    assert result.ci_low == pytest.approx(0.342, abs=5e-3)
    assert result.ci_high == pytest.approx(0.946, abs=5e-3)


def test_icc_is_consistency_not_absolute_agreement():
    """A constant offset of one rater leaves ICC(3,1) unchanged (it would lower ICC(2,1))."""
    shifted = SHROUT_FLEISS.copy()
    shifted[:, 1] += 100.0
    assert icc_3_1(shifted).icc == pytest.approx(icc_3_1(SHROUT_FLEISS).icc, abs=1e-12)


def test_icc_edge_cases():
    targets = np.array([1.0, 5.0, 9.0, 20.0])
    perfect = icc_3_1(np.column_stack([targets] * 3))
    assert (perfect.icc, perfect.ci_low, perfect.ci_high) == (1.0, 1.0, 1.0)
    # Agreement up to float rounding still counts as perfect.
    assert icc_3_1(np.column_stack([targets, targets * (1 + 1e-15), targets])).icc == 1.0
    assert math.isnan(icc_3_1(np.full((4, 3), 7.0)).icc)  # constant feature
    assert math.isnan(icc_3_1(SHROUT_FLEISS[:1]).icc)  # one target
    with_nan = SHROUT_FLEISS.copy()
    with_nan[0, 0] = np.nan
    assert math.isnan(icc_3_1(with_nan).icc)
    # Pure noise: ICC near zero, never below -1/(k-1).
    noise = icc_3_1(np.random.default_rng(0).normal(size=(200, 5)))
    assert -0.25 <= noise.icc < 0.1 and noise.ci_low < 0 < noise.ci_high
    with pytest.raises(ValueError, match="2-D"):
        icc_3_1(targets)


# --------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize(
    ("name", "kind", "radius", "offset"),
    [
        ("identity", "identity", 0, (0, 0, 0)),
        ("erode:1", "erode", 1, (0, 0, 0)),
        ("dilate:2", "dilate", 2, (0, 0, 0)),
        ("shift:1,-2,0", "shift", 0, (1, -2, 0)),
    ],
)
def test_parse_perturbation(name, kind, radius, offset):
    parsed = parse_perturbation(name)
    assert (parsed.kind, parsed.radius, parsed.offset) == (kind, radius, offset)


@pytest.mark.parametrize("name", ["erode", "erode:0", "shift:1,0", "rotate:5", "dilate:-1"])
def test_parse_perturbation_rejects(name):
    with pytest.raises(ConfigError, match="perturbation"):
        parse_perturbation(name)


def _blob() -> np.ndarray:
    """A lumpy 3-D mask (numpy k, j, i) away from the border."""
    k, j, i = np.indices((20, 30, 40))
    mask = (i - 20) ** 2 / 100 + (j - 15) ** 2 / 49 + (k - 10) ** 2 / 25 <= 1
    mask |= (i - 26) ** 2 + (j - 18) ** 2 + (k - 12) ** 2 <= 9
    return mask


def test_erosion_and_dilation_nest_by_one_face_layer():
    mask = _blob()
    eroded = perturb_array(mask, parse_perturbation("erode:1"))
    dilated = perturb_array(mask, parse_perturbation("dilate:1"))
    assert eroded.sum() < mask.sum() < dilated.sum()
    assert not (eroded & ~mask).any()  # eroded within original
    assert not (mask & ~dilated).any()  # original within dilated
    # Every removed voxel touched the background through a face, every added voxel the mask.
    padded = np.pad(mask, 1)
    faces = [np.roll(padded, s, axis=a)[1:-1, 1:-1, 1:-1] for a in range(3) for s in (-1, 1)]
    touches_background = np.any([~f for f in faces], axis=0)
    touches_mask = np.any(faces, axis=0)
    assert np.array_equal(mask & ~eroded, mask & touches_background)
    assert np.array_equal(dilated & ~mask, ~mask & touches_mask)
    # Erosion then dilation never leaves the original (opening), radius 2 nests inside radius 1.
    assert not (perturb_array(eroded, parse_perturbation("dilate:1")) & ~mask).any()
    assert perturb_array(mask, parse_perturbation("erode:2")).sum() < eroded.sum()


def test_erosion_empties_a_one_voxel_thick_lesion():
    mask = np.zeros((5, 5, 5), bool)
    mask[2, 1:4, 1:4] = True
    assert not perturb_array(mask, parse_perturbation("erode:1")).any()


def test_shift_moves_the_physical_centroid_by_one_voxel_along_the_image_axis():
    """On an oblique, anisotropic grid the centroid moves by direction @ (spacing * offset)."""
    mask_array = _blob()
    image = sitk.GetImageFromArray(mask_array.astype(np.uint8))
    image.SetSpacing((0.8, 1.1, 3.0))
    image.SetOrigin((-40.0, 12.0, 300.0))
    angle = np.deg2rad(20)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    image.SetDirection(tuple(rotation.ravel()))

    def centroid(img: sitk.Image) -> np.ndarray:
        k, j, i = np.nonzero(sitk.GetArrayViewFromImage(img))
        index = np.column_stack([i, j, k]).astype(float).mean(axis=0)
        return np.array(img.TransformContinuousIndexToPhysicalPoint(tuple(index)))

    for name, offset in [("shift:1,0,0", (1, 0, 0)), ("shift:0,-1,0", (0, -1, 0)),
                         ("shift:0,0,1", (0, 0, 1))]:  # fmt: skip
        perturbation = parse_perturbation(name)
        shifted = perturb_mask(image, perturbation)
        assert shifted.GetSpacing() == image.GetSpacing()
        assert shifted.GetOrigin() == image.GetOrigin()
        assert shifted.GetDirection() == image.GetDirection()
        moved = centroid(shifted) - centroid(image)
        expected = rotation @ (np.array(image.GetSpacing()) * np.array(offset))
        assert moved == pytest.approx(expected, abs=1e-9)
        axis = int(np.flatnonzero(offset)[0])
        assert np.linalg.norm(moved) == pytest.approx(image.GetSpacing()[axis])
        assert shift_mm(image, perturbation) == pytest.approx(tuple(expected))
        # A lesion away from the border keeps its voxel count exactly.
        assert sitk.GetArrayViewFromImage(shifted).sum() == mask_array.sum()


def test_shift_does_not_wrap_around_the_border():
    mask = np.zeros((3, 4, 5), bool)
    mask[:, :, -1] = True  # last column along i
    assert not perturb_array(mask, parse_perturbation("shift:1,0,0")).any()
    back = perturb_array(mask, parse_perturbation("shift:-1,0,0"))
    assert back[:, :, -2].all() and back.sum() == mask[:, :, -1].sum()
    assert not perturb_array(mask, parse_perturbation("shift:0,0,9")).any()


# --------------------------------------------------------------------------- subject choice


def test_select_subjects_is_deterministic_and_order_free():
    subjects = [f"S{i:03d}" for i in range(1, 37)]
    chosen = select_subjects(subjects, 10)
    assert len(chosen) == 10 and chosen == sorted(chosen)
    assert select_subjects(list(reversed(subjects)), 10) == chosen
    assert select_subjects(subjects, "all") == subjects
    assert select_subjects(subjects, 0) == []
    assert select_subjects(subjects, 100) == subjects
    # Adding a subject swaps at most one of the chosen.
    assert len(set(select_subjects([*subjects, "NEW01"], 10)) - set(chosen)) <= 1
    assert select_subjects(subjects, ["S002", "S001"]) == ["S001", "S002"]
    with pytest.raises(ConfigError, match="S999"):
        select_subjects(subjects, ["S999"])
    with pytest.raises(ConfigError, match="stability.subjects"):
        select_subjects(subjects, "some")


# --------------------------------------------------------------------------- extraction


def _ct_case(folder: Path, *, radius_mm: float, seed: int) -> tuple[Path, Path]:
    """A small heterogeneous calcified lesion on a 1 x 1 x 2 mm CT grid."""
    spacing = (1.0, 1.0, 2.0)
    k, j, i = np.indices((24, 48, 48)).astype(float)
    x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
    rng = np.random.default_rng(seed)
    hu = 40 + rng.normal(0, 10, x.shape)
    lesion = (x - 24) ** 2 + (y - 24) ** 2 + (z - 24) ** 2 <= radius_mm**2
    hu[lesion] = 200 + 20 * z[lesion] + rng.normal(0, 60, lesion.sum())
    paths = []
    for array, name in ((hu.astype(np.int16), "ct"), (lesion.astype(np.uint8), "mask")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        path = folder / f"{name}.nii.gz"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> list[dict]:
    """Stability records of four lesions of different size (the tiny extraction)."""
    records = []
    for index, radius in enumerate((7.0, 9.0, 11.0, 13.0)):
        folder = tmp_path_factory.mktemp(f"lesion{index}")
        image, mask = _ct_case(folder, radius_mm=radius, seed=index)
        runs = perturbed_features(
            image_path=image,
            mask_path=mask,
            params_file=PARAMS / "ct.yaml",
            modality="ct",
            perturbations=list(DEFAULT_PERTURBATIONS),
        )
        records.append(
            {"subject": f"L{index}", "modality": "ct", "status": "ok", "perturbations": runs}
        )
    return records


def test_extraction_under_each_perturbation(extracted):
    runs = extracted[0]["perturbations"]
    assert list(runs) == list(DEFAULT_PERTURBATIONS)
    assert all(run["status"] == "ok" for run in runs.values())
    volume = {name: run["features"]["conv_volume_ml"] for name, run in runs.items()}
    assert volume["erode:1"] < volume["identity"] < volume["dilate:1"]
    for name in ("shift:1,0,0", "shift:-1,0,0", "shift:0,1,0", "shift:0,-1,0"):
        assert volume[name] == pytest.approx(volume["identity"], rel=1e-9)
        assert runs[name]["volume_ml"] == pytest.approx(volume["identity"], rel=1e-9)
        assert np.linalg.norm(runs[name]["shift_mm"]) == pytest.approx(1.0)
    # Other voxels under a shift: the mean HU changes.
    shifted, original = runs["shift:1,0,0"]["features"], runs["identity"]["features"]
    assert shifted["conv_mean_hu"] != original["conv_mean_hu"]


def test_identity_perturbation_is_the_feature_stage_result(extracted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lesion0_again")
    image, mask = _ct_case(folder, radius_mm=7.0, seed=0)
    direct = extract_features(
        image_path=image, mask_path=mask, params_file=PARAMS / "ct.yaml", modality="ct"
    )
    assert extracted[0]["perturbations"]["identity"]["features"] == direct


def test_stability_table_from_extracted_lesions(extracted):
    table = stability_table(extracted, perturbations=DEFAULT_PERTURBATIONS)
    assert list(table.columns) == [
        "modality", "feature", "icc", "icc_ci_low", "icc_ci_high", "n_subjects",
        "n_perturbations",
    ]  # fmt: skip
    assert set(table.modality) == {"ct"} and table.feature.is_unique
    assert (table.n_subjects == 4).all() and (table.n_perturbations == 7).all()
    icc = table.set_index("feature")["icc"]
    assert icc.dropna().between(-1 / 6, 1).all()
    # Volume differs 6-fold between lesions and by a face layer under perturbation: stable.
    assert icc["original_shape_VoxelVolume"] > 0.95
    assert icc["conv_volume_ml"] > 0.95
    known = table.dropna(subset=["icc"])
    assert (known.icc_ci_low <= known.icc + 1e-12).all()
    assert (known.icc <= known.icc_ci_high + 1e-12).all()


def test_stability_table_needs_every_perturbation_of_a_subject(extracted):
    records = [dict(r) for r in extracted]
    broken = dict(records[0]["perturbations"])
    broken["erode:1"] = {"status": "failed", "reason": "lesion mask is empty"}
    records[0] = {**records[0], "perturbations": broken}
    records.append({"subject": "L9", "modality": "ct", "status": "absent"})
    table = stability_table(records, perturbations=DEFAULT_PERTURBATIONS)
    assert (table.n_subjects == 3).all()


def test_an_erosion_that_empties_the_lesion_is_a_failed_perturbation(tmp_path):
    image, _ = _ct_case(tmp_path, radius_mm=5.0, seed=0)
    thin = np.zeros((24, 48, 48), np.uint8)
    thin[12, 20:28, 20:28] = 1  # one slice thick
    mask = sitk.GetImageFromArray(thin)
    mask.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(mask, str(tmp_path / "thin.nii.gz"))
    runs = perturbed_features(
        image_path=image,
        mask_path=tmp_path / "thin.nii.gz",
        params_file=PARAMS / "ct.yaml",
        modality="ct",
        perturbations=["identity", "erode:1"],
    )
    assert runs["identity"]["status"] == "ok"
    assert runs["erode:1"]["status"] == "failed"
    assert "thin.nii.gz (perturbation erode:1)" in runs["erode:1"]["reason"]
    assert "stability" in runs["erode:1"]["reason"]


# --------------------------------------------------------------------------- ICC filter


def _stability(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["modality", "feature", "icc"])


def test_drop_unstable_maps_modality_and_feature_to_wide_columns():
    features = pd.DataFrame(
        np.ones((3, 5)),
        columns=["ct_a", "ct_b", "pet_a", "t1_conv_volume_ml", "ct_c"],
        index=["S1", "S2", "S3"],
    )
    stability = _stability(
        [
            ("ct", "a", 0.9),
            ("ct", "b", 0.5),
            ("pet", "a", 0.74),
            ("t1", "conv_volume_ml", 0.99),
            ("ct", "c", float("nan")),
        ]  # fmt: skip
    )
    kept, dropped = drop_unstable(features, stability, min_icc=0.75)
    assert dropped == ["ct_b", "pet_a"]
    # Unassessed (NaN) columns are kept; the pipeline's variance step removes constant ones.
    assert list(kept.columns) == ["ct_a", "t1_conv_volume_ml", "ct_c"]


def _model_inputs(tmp_path: Path) -> tuple[Path, dict[str, str], dict]:
    rng = np.random.default_rng(3)
    subjects = [f"S{i:02d}" for i in range(24)]
    labels = {s: ("tc" if i % 2 else "sarcoma") for i, s in enumerate(subjects)}
    y = np.array([labels[s] == "tc" for s in subjects], float)
    table = pd.DataFrame(
        {
            "ct_signal": y + rng.normal(0, 0.5, 24),
            "ct_noise1": rng.normal(size=24),
            "ct_noise2": rng.normal(size=24),
            "ct_conv_volume_ml": rng.uniform(1, 100, 24),
        },
        index=pd.Index(subjects, name="subject"),
    )
    path = tmp_path / "all.csv"
    table.to_csv(path)
    settings = {
        "missing": "drop",
        "seed": 1,
        "n_permutations": 0,
        "cv": {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 2, "bootstrap": 100,
               "group_by_site": False},
    }  # fmt: skip
    return path, labels, settings


def test_run_model_drops_features_below_min_icc(tmp_path):
    features, labels, settings = _model_inputs(tmp_path)
    stability = tmp_path / "feature_stability.csv"
    _stability([("ct", "signal", 0.95), ("ct", "noise1", 0.30), ("ct", "noise2", 0.80)]).to_csv(
        stability, index=False
    )
    common = {
        "features_csv": features, "labels": labels, "sites": dict.fromkeys(labels, "a"),
        "clinical": {}, "task": "tc_vs_sarcoma", "feature_set": "ct",
        "model": "logreg_elasticnet",
    }  # fmt: skip
    filtered = run_model(
        **common,
        settings={**settings, "min_icc": 0.75},
        out_json=tmp_path / "filtered.json",
        stability_csv=stability,
    )
    assert filtered["stability_filter"]["dropped"] == ["ct_noise1"]
    assert filtered["n_features"] == 2  # ct set = radiomic ct columns: signal, noise2
    assert any("stability filter: 1 of 4" in w for w in filtered["warnings"])
    plain = run_model(**common, settings={**settings, "min_icc": None},
                      out_json=tmp_path / "plain.json")  # fmt: skip
    assert plain["n_features"] == 3 and "stability_filter" not in plain
    with pytest.raises(ConfigError, match="min_icc"):
        run_model(**common, settings={**settings, "min_icc": 0.75}, out_json=tmp_path / "x.json")
