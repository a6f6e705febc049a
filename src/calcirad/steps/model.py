"""Step 4: fit and validate one (task, feature set, model) combination; aggregate the results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from calcirad.errors import ConfigError
from calcirad.model import comparison_table, evaluate, performance_table, top_features_table
from calcirad.model.feature_sets import drop_unstable
from calcirad.model.summary import best_result, permutation_table, with_permutation_nulls
from calcirad.steps.common import log, read_json, write_json
from calcirad.tables import write_table


def _clinical_frame(clinical: dict[str, dict]) -> pd.DataFrame | None:
    """Sample-sheet covariates as numbers (sex F/M -> 0/1); None when the sheet has none."""
    if not clinical:
        return None
    frame = pd.DataFrame.from_dict(clinical, orient="index")
    if "sex" in frame:
        frame["sex"] = frame["sex"].map({"F": 0.0, "M": 1.0, "f": 0.0, "m": 1.0})
    frame = frame.apply(pd.to_numeric, errors="coerce").dropna(axis=1, how="all")
    return frame if not frame.empty else None


def run_model(
    *,
    features_csv: str | Path,
    labels: dict[str, str],
    sites: dict[str, str],
    clinical: dict[str, dict],
    task: str,
    feature_set: str,
    model: str,
    settings: dict,
    out_json: str | Path,
    stability_csv: str | Path | None = None,
) -> dict:
    """Nested cross-validation of one combination; writes its metrics and outer predictions.

    With ``settings["min_icc"]`` set, features whose ICC(3,1) under mask perturbation
    (``stability_csv``, results/tables/feature_stability.csv) is below it are dropped first.
    """
    features = pd.read_csv(features_csv, dtype={"subject": str}).set_index("subject")
    stability_note = _stability_filter(features, settings.get("min_icc"), stability_csv)
    if stability_note:
        features = features.drop(columns=stability_note["dropped"])
    label_series = pd.Series(labels, name="label").sort_index()
    # Subjects that failed upstream have no features row; they are excluded, and counted.
    label_series = label_series[label_series.index.isin(features.index)]
    try:
        result = evaluate(
            features=features.loc[label_series.index],
            labels=label_series,
            task=task,
            feature_set=feature_set,
            model=model,
            cv=settings["cv"],
            seed=settings["seed"],
            sites=(
                pd.Series(sites).loc[label_series.index]
                if settings["cv"]["group_by_site"] or settings.get("harmonize")
                else None
            ),
            clinical=_clinical_frame(clinical),
            missing=settings["missing"],
            n_permutations=int(settings.get("n_permutations", 0)),
            harmonize=settings.get("harmonize"),
        )
        log.info("%s / %s / %s: n=%s AUC=%s", task, feature_set, model, result["n_subjects"],
                 result["auc"])  # fmt: skip
    except ConfigError as error:
        # Too few subjects of a class for this row's cross-validation (often after exclusions):
        # the row says so in the tables instead of failing the whole run.
        log.error("%s / %s / %s not estimable: %s", task, feature_set, model, error)
        result = {
            "task": task,
            "feature_set": feature_set,
            "model": model,
            "missing": settings["missing"],
            "n_subjects": int(label_series.size),
            "auc": None,
            "status": "not_estimable",
            "warnings": [f"not estimable: {error}"],
            "predictions": [],
            "top_features": [],
        }
    if stability_note:
        result["stability_filter"] = stability_note
        result["warnings"] = [*result.get("warnings", []), stability_note["note"]]
    write_json(out_json, result)
    return result


def _stability_filter(
    features: pd.DataFrame, min_icc: float | None, stability_csv: str | Path | None
) -> dict | None:
    """Which columns fall below ``min_icc`` (None when the filter is off)."""
    if min_icc is None:
        return None
    if not stability_csv:
        raise ConfigError("model.min_icc is set but no feature stability table was given")
    table = pd.read_csv(stability_csv)
    _, dropped = drop_unstable(features, table, min_icc=float(min_icc))
    note = (
        f"stability filter: {len(dropped)} of {features.shape[1]} columns of the feature table dropped "
        f"(ICC(3,1) under mask perturbation < {min_icc})"
    )
    log.info("%s", note)
    return {"min_icc": float(min_icc), "dropped": dropped, "note": note}


def run_permutation_null(
    *,
    results: list[str | Path],
    task: str,
    settings: dict,
    out_json: str | Path,
    **inputs,
) -> dict:
    """The leakage guard: the task's best row (highest AUC) refitted on permuted labels.

    Each of ``settings["n_permutations"]`` permutations reruns the whole nested CV (selection,
    tuning, fitting) on shuffled labels; the JSON holds the null AUCs and the permutation p-value.
    ``inputs`` are :func:`run_model`'s data arguments (features_csv, labels, sites, clinical,
    stability_csv). With 0 permutations, or no estimable row, nothing is refitted.
    """
    best = best_result([read_json(path) for path in results], task)
    n_permutations = int(settings.get("n_permutations", 0))
    if best is None or n_permutations == 0:
        reason = "no estimable row" if best is None else "model.n_permutations is 0"
        log.info("%s: no permutation null (%s)", task, reason)
        null = {
            "task": task,
            "feature_set": best and best["feature_set"],
            "model": best and best["model"],
            "auc": best and best["auc"],
            "n_permutations": 0,
            "null_auc": [],
            "note": reason,
        }
        write_json(out_json, null)
        return null
    log.info("%s: %d permutations of %s / %s (AUC %.3f)", task, n_permutations,
             best["feature_set"], best["model"], best["auc"])  # fmt: skip
    result = run_model(
        task=task,
        feature_set=best["feature_set"],
        model=best["model"],
        settings=settings | {"n_permutations": n_permutations},
        out_json=out_json,
        **inputs,
    )
    if result.get("auc") != best["auc"]:  # same data, seed and code: the refit must agree
        log.warning("%s: refitted AUC %s differs from the fitted row's %s", task,
                    result.get("auc"), best["auc"])  # fmt: skip
    return result


def write_model_tables(
    *,
    results: list[str | Path],
    tables_dir: str | Path,
    provenance: dict,
    nulls: list[str | Path] = (),
) -> dict[str, pd.DataFrame]:
    """performance, model_comparison, top_features and permutation_null tables (CSV, MD, TeX)."""
    loaded = [read_json(path) for path in results]
    null_results = [read_json(path) for path in nulls]
    estimable = [result for result in loaded if result.get("predictions")]
    tables_dir = Path(tables_dir)
    made = {
        "performance": (
            with_permutation_nulls(performance_table(loaded), null_results),
            "Cross-validated performance (outer folds of nested, repeated, stratified CV); "
            "null AUC and permutation p on each task's best row.",
        ),
        "model_comparison": (
            comparison_table(estimable),
            "AUC difference of each feature set against the conventional measures.",
        ),
        "top_features": (
            top_features_table(estimable),
            "Features most often selected over outer folds, with mean importance.",
        ),
        "permutation_null": (
            permutation_table(null_results),
            "Leakage guard: each task's best row refitted (whole nested CV) on permuted labels.",
        ),
    }
    for stem, (table, caption) in made.items():
        write_table(table, stem=tables_dir / stem, caption=caption, provenance=provenance)
    return {stem: table for stem, (table, _) in made.items()}
