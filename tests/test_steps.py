"""Workflow steps (the layer the workflow's jobs call): failures become data, not crashes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from calcirad.model.synthetic import make_cohort
from calcirad.steps import cli
from calcirad.steps.common import read_json
from calcirad.steps.features import run_features
from calcirad.steps.model import run_model, run_permutation_null, write_model_tables
from calcirad.steps.report import write_figures

REPO = Path(__file__).resolve().parents[1]

SETTINGS = {
    "cv": {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 2, "bootstrap": 200,
           "group_by_site": False},
    "seed": 1,
    "missing": "drop",
    "n_permutations": 0,
}  # fmt: skip


def _features(tmp_path, labels: dict[str, str]):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        rng.normal(size=(len(labels), 5)),
        index=pd.Index(sorted(labels), name="subject"),
        columns=[f"ct_original_firstorder_f{i}" for i in range(5)],
    )
    path = tmp_path / "all.csv"
    frame.to_csv(path)
    return path


def test_a_class_too_small_for_cv_gives_a_not_estimable_row(tmp_path):
    labels = {"A1": "tc", "B1": "sarcoma", "B2": "sarcoma", "B3": "sarcoma", "C1": "mimic"}
    features = _features(tmp_path, labels)
    kwargs = {"features_csv": features, "labels": labels, "sites": {s: "x" for s in labels},
              "clinical": {}, "feature_set": "ct", "model": "logreg_elasticnet",
              "settings": SETTINGS}  # fmt: skip
    out = tmp_path / "m.json"
    result = run_model(task="tc_vs_sarcoma", out_json=out, **kwargs)
    assert result["status"] == "not_estimable" and result["auc"] is None
    assert "not estimable" in read_json(out)["warnings"][0]
    tables = write_model_tables(results=[out], tables_dir=tmp_path / "t", provenance={"seed": 1})
    row = tables["performance"].iloc[0]
    assert row["task"] == "tc_vs_sarcoma" and np.isnan(row["auc"]) and row["n_warnings"] == 1
    figures = write_figures(results=[out], task="tc_vs_sarcoma", out_dir=tmp_path / "f")
    assert len(figures) == 10 and all(p.stat().st_size > 0 for p in figures)


def test_inventory_marks_a_series_of_an_unrequested_modality_as_not_used():
    from calcirad.steps.ingest import _used_or_not

    row = {"modality": "t1c", "chosen": True, "reason": "post-contrast"}
    assert _used_or_not(row, ["ct", "t1"]) == {
        "modality": "t1c",
        "chosen": False,
        "reason": "post-contrast; not used: t1c is not in config `modalities`",
    }
    assert _used_or_not({**row, "modality": "t1"}, ["ct", "t1"])["chosen"] is True


def _fit_rows(tmp_path, signal: float) -> tuple[list, dict]:
    """Two rows (ct, pet) of tc_vs_sarcoma on a synthetic cohort; their JSONs and the data."""
    features, labels, sites, _ = make_cohort(n_per_class=12, signal=signal, seed=3)
    path = tmp_path / f"all_{signal}.csv"
    features.rename_axis("subject").to_csv(path)
    data = {"features_csv": path, "labels": labels.to_dict(), "sites": sites.to_dict(),
            "clinical": {}}  # fmt: skip
    outs = []
    for feature_set in ("ct", "pet"):
        out = tmp_path / f"{signal}_{feature_set}.json"
        run_model(task="tc_vs_sarcoma", feature_set=feature_set, model="logreg_elasticnet",
                  settings=SETTINGS, out_json=out, **data)  # fmt: skip
        outs.append(out)
    return outs, data


def test_permutation_null_refits_the_best_row_on_permuted_labels(tmp_path):
    """With signal the best row beats all 9 permutations (p = 1/10); without, the null and the
    observed AUC both sit near 0.5 (p is then uniform: no bound on one draw). The tables put the
    null on the best row only."""
    settings = SETTINGS | {"n_permutations": 9}
    for signal in (2.0, 0.0):
        outs, data = _fit_rows(tmp_path, signal)
        fitted = [read_json(path) for path in outs]
        best = max(fitted, key=lambda r: r["auc"])
        null_json = tmp_path / f"null_{signal}.json"
        null = run_permutation_null(results=outs, task="tc_vs_sarcoma", settings=settings,
                                    out_json=null_json, **data)  # fmt: skip
        assert (null["feature_set"], null["model"]) == (best["feature_set"], best["model"])
        assert null["auc"] == best["auc"]  # the same row refitted: identical AUC
        assert len(null["null_auc"]) == 9
        assert abs(null["null_auc_mean"] - 0.5) < 0.15, null["null_auc"]
        if signal:
            assert null["auc"] > 0.8 and null["permutation_p"] == 0.1
        else:
            assert abs(null["auc"] - 0.5) < 0.15, null["auc"]
        tables = write_model_tables(results=outs, nulls=[null_json], tables_dir=tmp_path / "t",
                                    provenance={"seed": 1})  # fmt: skip
        performance = tables["performance"]
        assert performance.permutation_p.notna().sum() == 1
        assert tables["permutation_null"].loc[0, "n_permutations"] == 9
    # 0 permutations: nothing is refitted and the JSON says why
    none = run_permutation_null(results=outs, task="tc_vs_sarcoma", settings=SETTINGS,
                                out_json=tmp_path / "none.json", **data)  # fmt: skip
    assert none["n_permutations"] == 0 and none["null_auc"] == []
    assert none["note"] == "model.n_permutations is 0"


# ---- the per-subject command line (what the workflow's shell: rules run) ----------------------


def _tiny_ct(folder: Path) -> tuple[Path, Path]:
    """A 24^3 CT of noise around 60 HU with a 10^3 block of 400 HU, and that block as mask."""
    rng = np.random.default_rng(3)
    hu = rng.normal(60, 20, size=(24, 24, 24)).astype(np.int16)
    hu[7:17, 7:17, 7:17] += 340
    nifti, masks = folder / "nifti", folder / "masks"
    nifti.mkdir(parents=True)
    masks.mkdir(parents=True)
    for array, path in (
        (hu, nifti / "ct.nii.gz"),
        ((hu > 250).astype(np.uint8), masks / "ct.nii.gz"),
    ):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 1.25))
        sitk.WriteImage(image, str(path))
    return nifti, masks


def test_the_features_command_writes_what_the_step_function_writes(tmp_path):
    nifti, masks = _tiny_ct(tmp_path)
    params = REPO / "config/radiomics/ct.yaml"
    direct = tmp_path / "direct.json"
    run_features(subject="S1", modality="ct", nifti_dir=nifti, masks_dir=masks,
                 params_file=params, out_json=direct)  # fmt: skip
    by_command = tmp_path / "command.json"
    log = tmp_path / "logs" / "features.log"
    command = [sys.executable, "-m", "calcirad.steps", "features", "--subject", "S1",
               "--modality", "ct", "--nifti", str(nifti), "--masks", str(masks),
               "--params", str(params), "--out", str(by_command), "--log", str(log)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = read_json(by_command)
    assert record["status"] == "ok"
    assert record == read_json(direct)
    # A bad mask (empty): a failure record, and the reason in the job's log, naming the subject.
    empty = sitk.Image(24, 24, 24, sitk.sitkUInt8)
    empty.SetSpacing((0.8, 0.8, 1.25))
    sitk.WriteImage(empty, str(masks / "ct.nii.gz"))
    failed = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 0, failed.stderr  # recorded as data: the other jobs go on
    assert read_json(by_command)["status"] == "failed"
    assert "ERROR calcirad" in log.read_text() and "S1" in log.read_text()


def test_the_step_command_names_a_bad_option_value(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["segment", "--subject", "S1", "--nifti", "n", "--out", "o",
                  "--segmentation", "{not json", "--mask", "ct"])  # fmt: skip
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "--segmentation" in message and "not JSON" in message


def test_the_segment_command_takes_user_masks_per_modality():
    args = cli.build_parser().parse_args(
        ["segment", "--subject", "S1", "--nifti", "n", "--out", "o", "--segmentation", "{}",
         "--mask", "ct=masks/a b.nii.gz", "--mask", "t2=rt=1.dcm", "--truth", "t.nii.gz"]
    )  # fmt: skip
    assert args.user_masks == {"ct": "masks/a b.nii.gz", "t2": "rt=1.dcm"}
    assert (args.truth, args.truth_bone, args.segmentation) == ("t.nii.gz", None, {})
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(
            ["segment", "--subject", "S1", "--nifti", "n", "--out", "o", "--segmentation", "{}",
             "--mask", "ct"]
        )  # fmt: skip
