"""Figures: every figure writes PNG + SVG, and identical inputs give identical bytes."""

from __future__ import annotations

import pytest

from calcirad.figures import (
    calibration_figure,
    confusion_counts,
    confusion_figure,
    importance_figure,
    roc_figure,
)
from calcirad.model import evaluate
from calcirad.model.synthetic import make_cohort

CV = {"outer_folds": 3, "outer_repeats": 2, "inner_folds": 2, "bootstrap": 100}


@pytest.fixture(scope="module")
def results():
    features, labels, _, _ = make_cohort(signal=1.5, seed=5)
    return [
        evaluate(
            features=features,
            labels=labels,
            task=task,
            feature_set=feature_set,
            model="logreg_elasticnet",
            cv=CV,
            seed=3,
        )  # fmt: skip
        for task in ("tc_vs_sarcoma", "multiclass")
        for feature_set in ("conventional", "ct")
    ]


FIGURES = {
    "roc": roc_figure,
    "calibration": calibration_figure,
    "confusion": confusion_figure,
    "importance": importance_figure,
}


@pytest.mark.parametrize("name", sorted(FIGURES))
@pytest.mark.parametrize("task", ["tc_vs_sarcoma", "multiclass"])
def test_figure_files_are_deterministic(results, tmp_path, name, task):
    first = FIGURES[name](results, task=task, out_stem=tmp_path / "a" / name)
    second = FIGURES[name](results, task=task, out_stem=tmp_path / "b" / name)
    assert [p.name for p in first] == [f"{name}.png", f"{name}.svg"]
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes()
    svg = first[1].read_text()
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg
    assert b"Software" not in first[0].read_bytes()


def test_confusion_counts_average_over_repeats(results):
    counts = confusion_counts(results[0])
    assert counts.sum() == pytest.approx(results[0]["n_subjects"])


def test_named_row_and_unknown_row(results, tmp_path):
    paths = importance_figure(
        results,
        task="tc_vs_sarcoma",
        feature_set="ct",
        model="logreg_elasticnet",
        out_stem=tmp_path / "imp",
    )
    assert all(p.exists() for p in paths)
    with pytest.raises(ValueError, match="no result"):
        confusion_figure(results, task="tc_vs_sarcoma", feature_set="pet", out_stem=tmp_path / "x")
    with pytest.raises(ValueError, match="no results for task"):
        roc_figure(results, task="tc_vs_mimics", out_stem=tmp_path / "y")
