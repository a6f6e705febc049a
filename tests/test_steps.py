"""Workflow steps (the layer the thin scripts call): failures become data, not crashes."""

from __future__ import annotations

import numpy as np
import pandas as pd

from calcirad.steps.common import read_json
from calcirad.steps.model import run_model, write_model_tables
from calcirad.steps.report import write_figures

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
    assert len(figures) == 8 and all(p.stat().st_size > 0 for p in figures)


def test_inventory_marks_a_series_of_an_unrequested_modality_as_not_used():
    from calcirad.steps.ingest import _used_or_not

    row = {"modality": "t1c", "chosen": True, "reason": "post-contrast"}
    assert _used_or_not(row, ["ct", "t1"]) == {
        "modality": "t1c",
        "chosen": False,
        "reason": "post-contrast; not used: t1c is not in config `modalities`",
    }
    assert _used_or_not({**row, "modality": "t1"}, ["ct", "t1"])["chosen"] is True
