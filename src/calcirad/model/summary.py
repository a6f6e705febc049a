"""Tables built from evaluate() results: performance, comparison against a reference set, top features."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from calcirad.model import metrics
from calcirad.model.feature_sets import FEATURE_SETS, TASKS
from calcirad.model.pipelines import MODELS

PERFORMANCE_COLUMNS = [
    "task", "feature_set", "model", "n_subjects", "n_positive", "n_features",
    "auc", "auc_ci_low", "auc_ci_high", "balanced_accuracy", "sensitivity", "specificity",
    "brier", "calibration_slope", "calibration_intercept", "null_auc_mean", "null_auc_sd",
    "permutation_p", "n_permutations", "missing", "n_warnings",
]  # fmt: skip

KEY = ["task", "feature_set", "model"]


def _order(values: pd.Series, known: list[str]) -> pd.Series:
    """Sort key: declared order first, then any other name alphabetically after them."""
    rank = {name: i for i, name in enumerate(known)}
    return values.map(lambda v: (rank.get(v, len(known)), str(v)))


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Deterministic order: tasks, feature sets and models in their declared order."""
    orders = {"task": list(TASKS), "feature_set": list(FEATURE_SETS), "model": list(MODELS)}
    columns = [c for c in KEY if c in df.columns]
    return df.sort_values(
        columns, key=lambda s: _order(s, orders[s.name]), kind="mergesort"
    ).reset_index(drop=True)


def performance_table(results: list[dict]) -> pd.DataFrame:
    """One row per (task, feature_set, model) with discrimination, calibration and the null summary."""
    rows = []
    for result in results:
        row = {column: result.get(column) for column in PERFORMANCE_COLUMNS}
        row["n_warnings"] = len(result.get("warnings", []))
        rows.append(row)
    df = pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS)
    numeric = [
        c for c in PERFORMANCE_COLUMNS if c not in ("task", "feature_set", "model", "missing")
    ]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return sort_rows(df)


def best_result(results: list[dict], task: str) -> dict | None:
    """The task's best estimable row: highest AUC, ties to the first in table order; None if none."""
    rows = [r for r in results if r["task"] == task and r.get("auc") is not None]
    if not rows:
        return None
    keys = pd.DataFrame([{k: r[k] for k in KEY} | {"position": i} for i, r in enumerate(rows)])
    ordered = [rows[i] for i in sort_rows(keys)["position"]]
    return max(ordered, key=lambda r: r["auc"])  # max keeps the first of equal AUCs


NULL_COLUMNS = ["null_auc_mean", "null_auc_sd", "permutation_p", "n_permutations"]


def with_permutation_nulls(performance: pd.DataFrame, nulls: list[dict]) -> pd.DataFrame:
    """The performance table with each task's permutation null on the row it was computed for."""
    df = performance.copy()
    for null in nulls:
        if not null.get("n_permutations"):
            continue
        row = (
            (df["task"] == null["task"])
            & (df["feature_set"] == null["feature_set"])
            & (df["model"] == null["model"])
        )
        df.loc[row, NULL_COLUMNS] = [null.get(column) for column in NULL_COLUMNS]
    return df


def permutation_table(nulls: list[dict]) -> pd.DataFrame:
    """Per task: the best row refitted on permuted labels (whole nested CV each time).

    ``auc`` is the observed AUC of that row; the null is summarised by its mean, SD, 95th
    percentile and maximum; ``permutation_p`` = (1 + #null >= observed) / (1 + n).
    """
    rows = []
    for null in nulls:
        values = np.asarray(null.get("null_auc") or [], float)
        rows.append(
            {
                "task": null["task"],
                "feature_set": null.get("feature_set"),
                "model": null.get("model"),
                "auc": null.get("auc"),
                "n_permutations": int(null.get("n_permutations") or 0),
                "null_auc_mean": null.get("null_auc_mean"),
                "null_auc_sd": null.get("null_auc_sd"),
                "null_auc_q95": float(np.quantile(values, 0.95)) if values.size else math.nan,
                "null_auc_max": float(values.max()) if values.size else math.nan,
                "permutation_p": null.get("permutation_p"),
            }
        )
    columns = [
        "task", "feature_set", "model", "auc", "n_permutations", "null_auc_mean", "null_auc_sd",
        "null_auc_q95", "null_auc_max", "permutation_p",
    ]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    numeric = columns[3:]
    df[numeric] = df[numeric].apply(pd.to_numeric, errors="coerce")
    return sort_rows(df)


def prediction_arrays(result: dict, subjects: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``y[n]`` and ``proba[repeat, n, class]`` of ``subjects`` from a result's prediction records."""
    records = pd.DataFrame(result["predictions"])
    records = records[records["subject"].isin(subjects)]
    repeats = sorted(records["repeat"].unique())
    position = {s: i for i, s in enumerate(subjects)}
    n_classes = len(records["proba"].iloc[0])
    proba = np.full((len(repeats), len(subjects), n_classes), np.nan)
    y = np.zeros(len(subjects), dtype=int)
    for record in records.itertuples(index=False):
        proba[repeats.index(record.repeat), position[record.subject]] = record.proba
        y[position[record.subject]] = record.y_true
    return y, proba


def _subjects(result: dict) -> set[str]:
    return {record["subject"] for record in result["predictions"]}


def paired_comparison(result: dict, reference: dict) -> dict:
    """AUC difference (row - reference) on common subjects: paired bootstrap CI/p and DeLong p."""
    subjects = sorted(_subjects(result) & _subjects(reference))
    y, proba = prediction_arrays(result, subjects)
    _, proba_ref = prediction_arrays(reference, subjects)
    n_boot, seed = int(reference["cv"]["bootstrap"]), int(reference["seed"])
    index = metrics.stratified_bootstrap(y, n_boot=n_boot, seed=seed)
    boot = metrics.auc(y[index], proba[:, index, :]).mean(axis=0)
    boot_ref = metrics.auc(y[index], proba_ref[:, index, :]).mean(axis=0)
    difference = boot - boot_ref
    low, high = metrics.percentile_ci(difference)
    auc_row, auc_ref = metrics.repeat_mean_auc(y, proba), metrics.repeat_mean_auc(y, proba_ref)
    p_boot = min(1.0, 2 * min(np.mean(difference <= 0), np.mean(difference >= 0)))
    p_delong = math.nan
    if proba.shape[-1] == 2:
        p_delong = metrics.delong_paired(
            y, proba[..., 1].mean(axis=0), proba_ref[..., 1].mean(axis=0)
        )["p_value"]
    return {
        "n_common": len(subjects), "auc": auc_row, "auc_reference": auc_ref,
        "auc_difference": auc_row - auc_ref, "difference_ci_low": low, "difference_ci_high": high,
        "p_bootstrap": float(p_boot), "p_delong": p_delong,
    }  # fmt: skip


def comparison_table(results: list[dict], *, reference: str = "conventional") -> pd.DataFrame:
    """Each feature set against ``reference`` within the same task and model."""
    references = {(r["task"], r["model"]): r for r in results if r["feature_set"] == reference}
    rows = []
    for result in results:
        ref = references.get((result["task"], result["model"]))
        if ref is None or result["feature_set"] == reference:
            continue
        row = {
            "task": result["task"],
            "feature_set": result["feature_set"],
            "model": result["model"],
        }
        rows.append(row | {"reference": reference} | paired_comparison(result, ref))
    columns = [
        "task", "feature_set", "model", "reference", "n_common", "auc", "auc_reference",
        "auc_difference", "difference_ci_low", "difference_ci_high", "p_bootstrap", "p_delong",
    ]  # fmt: skip
    return sort_rows(pd.DataFrame(rows, columns=columns))


def top_features_table(results: list[dict], *, top: int = 15) -> pd.DataFrame:
    """The ``top`` most often selected features of each row (ties broken by importance, then name)."""
    rows = []
    for result in results:
        for rank, feature in enumerate(result.get("top_features", [])[:top], start=1):
            rows.append({key: result[key] for key in KEY} | {"rank": rank} | feature)
    columns = [*KEY, "rank", "feature", "selection_frequency", "mean_importance"]
    df = pd.DataFrame(rows, columns=columns)
    if df.empty:
        return df
    df = sort_rows(df)
    # sort_rows is stable, so ranks stay in order within each row of results.
    return df
