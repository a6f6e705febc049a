"""Figures from evaluate() results: ROC with bootstrap band, calibration, confusion matrix, importance.

Each figure is written as PNG and SVG with deterministic bytes: figures are built on a bare
``Figure`` (no pyplot global state; PNG through Agg), SVG ids come from a fixed hash salt, text is
drawn as paths, and the date/software metadata are removed.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from calcirad.atomic import atomic_path
from calcirad.model import metrics
from calcirad.model.summary import best_result, prediction_arrays, sort_rows

RC = {"svg.hashsalt": "calcirad", "svg.fonttype": "path", "font.size": 9, "path.simplify": True}
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
FPR_GRID = np.linspace(0.0, 1.0, 101)
ROC_BOOTSTRAP = 200


def _task_rows(results: list[dict], task: str) -> list[dict]:
    """The task's results in the same deterministic order as the tables."""
    rows = [r for r in results if r["task"] == task]
    if not rows:
        raise ValueError(f"no results for task {task!r}")
    order = sort_rows(
        pd.DataFrame([{k: r[k] for k in ("task", "feature_set", "model")} for r in rows])
    )
    key = {(r["feature_set"], r["model"]): r for r in rows}
    return [key[(fs, m)] for fs, m in zip(order["feature_set"], order["model"], strict=True)]


def _pick(results: list[dict], *, task: str, feature_set: str | None, model: str | None) -> dict:
    """The named row, or the task's best-AUC row when neither is given (ties: table order)."""
    rows = _task_rows(results, task)
    if feature_set is None and model is None:
        return best_result(rows, task) or rows[0]
    matches = [
        r for r in rows if feature_set in (None, r["feature_set"]) and model in (None, r["model"])
    ]
    if not matches:
        raise ValueError(
            f"no result for task {task!r}, feature set {feature_set!r}, model {model!r}"
        )
    return matches[0]


def _label(result: dict) -> str:
    auc = result.get("auc")
    text = f"{result['feature_set']} / {result['model']}"
    return f"{text} (AUC {auc:.2f})" if auc is not None else text


def positive_scores(result: dict) -> tuple[np.ndarray, np.ndarray]:
    """``positive[n]`` and ``score[repeat, n]``: P(TC) for every task (TC is code 1, or code 0 in multiclass)."""
    subjects = sorted({r["subject"] for r in result["predictions"]})
    y, proba = prediction_arrays(result, subjects)
    tc = result["classes"].index("tc")
    return y == tc, proba[..., tc]


def _save(fig: Figure, out_stem: Path) -> list[Path]:
    out_stem = Path(out_stem)
    paths = []
    for fmt in ("png", "svg"):
        path = out_stem.with_name(f"{out_stem.name}.{fmt}")
        with atomic_path(path) as tmp, matplotlib.rc_context(RC):
            fig.savefig(tmp, format=fmt, dpi=150, metadata=METADATA[fmt])
        paths.append(path)
    return paths


def _new_figure(size: tuple[float, float]) -> Figure:
    with matplotlib.rc_context(RC):
        return Figure(figsize=size, layout="constrained")


def mean_roc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """TPR on ``FPR_GRID`` averaged over repeats (each repeat's outer predictions pooled)."""
    curves = []
    for score in scores:
        fpr, tpr, _ = roc_curve(positive, score)
        curves.append(np.interp(FPR_GRID, fpr, tpr))
    curve = np.mean(curves, axis=0)
    curve[0] = 0.0
    return curve


def roc_band(
    positive: np.ndarray, scores: np.ndarray, *, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise 95% band of the mean ROC over a stratified bootstrap of subjects."""
    index = metrics.stratified_bootstrap(positive.astype(int), n_boot=ROC_BOOTSTRAP, seed=seed)
    curves = np.array([mean_roc(positive[i], scores[:, i]) for i in index])
    return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def roc_figure(results: list[dict], *, task: str, out_stem: Path) -> list[Path]:
    """Mean ROC of every row of ``task`` with its bootstrap band (multiclass: TC vs rest)."""
    with matplotlib.rc_context(RC):
        fig = _new_figure((5.0, 4.5))
        ax = fig.add_subplot()
        for index, result in enumerate(_task_rows(results, task)):
            positive, scores = positive_scores(result)
            color = f"C{index % 10}"
            low, high = roc_band(positive, scores, seed=int(result["seed"]))
            ax.fill_between(FPR_GRID, low, high, color=color, alpha=0.12, linewidth=0)
            ax.plot(FPR_GRID, mean_roc(positive, scores), color=color, label=_label(result))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set(
            xlabel="1 - specificity",
            ylabel="Sensitivity",
            xlim=(0, 1),
            ylim=(0, 1.01),
            title=f"ROC: {task}",
        )
        ax.legend(loc="lower right", fontsize=7)
        return _save(fig, out_stem)


def calibration_curve(positive: np.ndarray, probability: np.ndarray, *, n_bins: int) -> tuple:
    """Mean predicted vs observed frequency in equal-width bins (empty bins left out) and bin sizes."""
    bins = np.clip((probability * n_bins).astype(int), 0, n_bins - 1)
    predicted, observed, counts = [], [], []
    for b in range(n_bins):
        members = bins == b
        if members.any():
            predicted.append(probability[members].mean())
            observed.append(positive[members].mean())
            counts.append(int(members.sum()))
    return np.array(predicted), np.array(observed), np.array(counts)


def calibration_figure(
    results: list[dict], *, task: str, out_stem: Path, n_bins: int = 5
) -> list[Path]:
    """Reliability curve of P(TC) per row (predictions averaged over repeats)."""
    with matplotlib.rc_context(RC):
        fig = _new_figure((5.0, 4.5))
        ax = fig.add_subplot()
        for index, result in enumerate(_task_rows(results, task)):
            positive, scores = positive_scores(result)
            predicted, observed, counts = calibration_curve(
                positive, scores.mean(axis=0), n_bins=n_bins
            )
            ax.plot(predicted, observed, marker="o", color=f"C{index % 10}", label=_label(result))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set(
            xlabel="Predicted P(TC)",
            ylabel="Observed fraction TC",
            xlim=(0, 1),
            ylim=(0, 1),
            title=f"Calibration: {task}",
        )
        ax.legend(loc="upper left", fontsize=7)
        return _save(fig, out_stem)


def confusion_counts(result: dict) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted) averaged over repeats."""
    n_classes = len(result["classes"])
    counts = np.zeros((n_classes, n_classes))
    for record in result["predictions"]:
        counts[record["y_true"], record["y_pred"]] += 1
    n_repeats = len({record["repeat"] for record in result["predictions"]})
    return counts / n_repeats


def confusion_figure(
    results: list[dict],
    *,
    task: str,
    out_stem: Path,
    feature_set: str | None = None,
    model: str | None = None,
) -> list[Path]:
    """Confusion matrix (mean counts over repeats) of one row; the best-AUC row by default."""
    result = _pick(results, task=task, feature_set=feature_set, model=model)
    counts = confusion_counts(result)
    classes = result["classes"]
    with matplotlib.rc_context(RC):
        fig = _new_figure((4.0, 3.6))
        ax = fig.add_subplot()
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (i, j), value in np.ndenumerate(counts):
            colour = "white" if value > counts.max() / 2 else "black"
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", color=colour)
        ticks = range(len(classes))
        ax.set(xticks=ticks, yticks=ticks, xticklabels=classes, yticklabels=classes)
        ax.set(xlabel="Predicted", ylabel="True", title=f"{task}\n{_label(result)}")
        return _save(fig, out_stem)


def importance_figure(
    results: list[dict],
    *,
    task: str,
    out_stem: Path,
    feature_set: str | None = None,
    model: str | None = None,
    top: int = 15,
) -> list[Path]:
    """Mean normalised importance of the most often selected features, selection frequency annotated."""
    result = _pick(results, task=task, feature_set=feature_set, model=model)
    features = result["top_features"][:top][::-1]  # barh draws bottom-up: most frequent on top
    names = [f["feature"] for f in features]
    values = [f["mean_importance"] for f in features]
    with matplotlib.rc_context(RC):
        fig = _new_figure((6.0, 0.3 * max(len(names), 3) + 1.2))
        ax = fig.add_subplot()
        ax.barh(range(len(names)), values, color="C0")
        for position, feature in enumerate(features):
            ax.text(
                feature["mean_importance"],
                position,
                f" {feature['selection_frequency']:.0%}",
                va="center",
                fontsize=7,
            )
        ax.set(
            yticks=range(len(names)),
            yticklabels=names,
            xlabel="Mean normalised importance (label: selection frequency)",
        )
        ax.set_title(f"{task}\n{_label(result)}")
        return _save(fig, out_stem)


def permutation_figure(null: dict, *, out_stem: Path) -> list[Path]:
    """Histogram of the permuted-label AUCs of the task's best row, the observed AUC marked."""
    values = np.asarray(null["null_auc"], float)
    with matplotlib.rc_context(RC):
        fig = _new_figure((5.0, 3.2))
        ax = fig.add_subplot()
        ax.hist(values, bins=np.linspace(0.0, 1.0, 41), color="0.6", label="permuted labels")
        ax.axvline(0.5, color="0.3", linestyle=":", linewidth=1)
        ax.axvline(null["auc"], color="C3", label=f"observed AUC {null['auc']:.2f}")
        ax.set(
            xlim=(0, 1),
            xlabel="AUC (whole nested CV refitted per permutation)",
            ylabel="Permutations",
        )
        ax.legend(loc="upper left", fontsize=7, frameon=False)
        ax.set_title(
            f"{null['task']}: {_label(null)}\n"
            f"{len(values)} permutations, p = {null['permutation_p']:.3f}"
        )
        return _save(fig, out_stem)


def message_figure(text: str, *, out_stem: Path) -> list[Path]:
    """A figure that says why there is nothing to plot (e.g. no model could be estimated)."""
    fig = _new_figure((5.0, 2.0))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _save(fig, out_stem)
