"""Modelling stage: feature sets, pipelines, nested CV, metrics, leakage guards, summary tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.utils.estimator_checks import parametrize_with_checks

from calcirad.errors import ConfigError
from calcirad.model import (
    FEATURE_SETS,
    MODELS,
    CorrelationFilter,
    build_model,
    comparison_table,
    evaluate,
    metrics,
    performance_table,
    select_feature_set,
    task_labels,
    top_features_table,
)
from calcirad.model.synthetic import make_cohort

FAST_CV = {"outer_folds": 4, "outer_repeats": 2, "inner_folds": 3, "bootstrap": 300}


def run(cohort, **overrides):
    features, labels, sites, clinical = cohort
    kwargs = {
        "features": features, "labels": labels, "task": "tc_vs_sarcoma", "feature_set": "all",
        "model": "logreg_elasticnet", "cv": FAST_CV, "seed": 7, "sites": sites, "clinical": clinical,
    }  # fmt: skip
    return evaluate(**(kwargs | overrides))


@pytest.fixture(scope="module")
def signal_cohort():
    return make_cohort(signal=2.5, seed=1)


@pytest.fixture(scope="module")
def signal_results(signal_cohort):
    return [
        run(signal_cohort, feature_set=name, n_permutations=5 if name == "all" else 0)
        for name in ("all", "conventional", "ct")
    ]


# --- custom transformer -------------------------------------------------------------------------


@parametrize_with_checks([CorrelationFilter(), CorrelationFilter(threshold=0.5, method="spearman")])
def test_correlation_filter_follows_sklearn_contract(estimator, check):
    check(estimator)


def test_correlation_filter_drops_near_duplicates_keeping_the_first():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50))
    X = np.column_stack([a, a * 2 + 0.01 * rng.normal(size=50), b, -b])
    kept = CorrelationFilter(threshold=0.9).fit(X).get_support()
    assert kept.tolist() == [True, False, True, False]


# --- feature sets and tasks -----------------------------------------------------------------------


def test_task_labels_codes_tc_as_positive():
    labels = pd.Series({"s1": "TC", "s2": "sarcoma", "s3": "mimic ", "s4": "tc"})
    assert task_labels(labels, "tc_vs_sarcoma").to_dict() == {"s1": 1, "s2": 0, "s4": 1}
    assert task_labels(labels, "tc_vs_mimics").to_dict() == {"s1": 1, "s2": 0, "s3": 0, "s4": 1}
    assert task_labels(labels, "multiclass").to_dict() == {"s1": 0, "s2": 1, "s3": 2, "s4": 0}
    with pytest.raises(ConfigError, match="unknown labels"):
        task_labels(pd.Series({"s1": "osteoma"}), "multiclass")
    with pytest.raises(ConfigError, match="unknown task"):
        task_labels(labels, "tc_vs_everything")


def test_feature_sets_take_the_declared_columns():
    features, _, _, clinical = make_cohort(seed=0)
    conventional = select_feature_set(features, "conventional")
    assert all("_conv_" in c for c in conventional.columns) and conventional.shape[1] == 8
    ct = select_feature_set(features, "ct")
    assert all(c.startswith("ct_") and "_conv_" not in c for c in ct.columns)
    mr = select_feature_set(features, "mr")
    assert {c.split("_")[0] for c in mr.columns} == {"t1", "t2"}
    assert select_feature_set(features, "all").shape[1] == features.shape[1]
    clin = select_feature_set(features, "clinical", clinical=clinical)
    assert list(clin.columns) == ["clin_age", "clin_eskd", "clin_phosphate_mg_dl", "clin_sex_m"]
    both = select_feature_set(features, "clinical+all", clinical=clinical)
    assert both.shape[1] == features.shape[1] + 4
    with pytest.raises(ConfigError, match="clinical"):
        select_feature_set(features, "clinical")
    assert set(FEATURE_SETS) >= {"ct", "t1", "t2", "mr", "pet", "conventional", "ct+pet", "all"}


def test_missing_rule_drop_versus_impute():
    features, *_ = make_cohort(missing_fraction=0.3, seed=3)
    no_pet = features.filter(like="pet_").isna().all(axis=1)
    dropped = select_feature_set(features, "ct+pet", missing="drop")
    imputed = select_feature_set(features, "ct+pet", missing="impute")
    assert len(dropped) == len(features) - no_pet.sum()
    assert len(imputed) == len(features)
    assert len(select_feature_set(features, "pet", missing="impute")) == len(dropped)
    with pytest.raises(ConfigError):
        select_feature_set(features, "ct", missing="guess")


def test_every_model_builds_with_valid_grid():
    for name in MODELS:
        pipeline, grid = build_model(name, seed=0)
        assert [step for step, _ in pipeline.steps][:5] == [
            "impute", "variance", "correlation", "scale", "select",
        ]  # fmt: skip
        assert grid
    with pytest.raises(ConfigError, match="unknown grid"):
        build_model("random_forest", seed=0, param_grid={"classifier__nope": [1]})


# --- metrics ---------------------------------------------------------------------------------------


def test_rank_auc_matches_sklearn_and_handles_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    score = rng.integers(0, 5, 40).astype(float)
    assert metrics.rank_auc(y == 1, score) == pytest.approx(roc_auc_score(y, score))
    proba = rng.dirichlet(np.ones(3), size=40)
    y3 = np.arange(40) % 3
    expected = roc_auc_score(y3, proba, multi_class="ovr", average="macro")
    assert metrics.auc(y3, proba) == pytest.approx(expected)


def test_calibration_of_well_calibrated_predictions():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 4000)
    y = (rng.uniform(size=p.size) < p).astype(int)
    result = metrics.calibration(y, p)
    assert result["calibration_slope"] == pytest.approx(1.0, abs=0.15)
    assert result["calibration_intercept"] == pytest.approx(0.0, abs=0.1)
    assert np.isnan(
        metrics.calibration(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))[
            "calibration_slope"
        ]
    )


def test_delong_equal_scores_and_clear_difference():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 50)
    good = y + rng.normal(scale=0.5, size=100)
    noise = rng.normal(size=100)
    assert metrics.delong_paired(y, good, good)["p_value"] == 1.0
    result = metrics.delong_paired(y, good, noise)
    assert result["auc_a"] == pytest.approx(roc_auc_score(y, good))
    assert result["p_value"] < 0.001


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    y = np.array([0, 0, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    threshold = metrics.youden_threshold(y, score)
    assert threshold in (0.4, 0.7)
    assert metrics.threshold_metrics(y, (score >= 0.7).astype(int))["specificity"] == 1.0


# --- evaluate -------------------------------------------------------------------------------------


def test_signal_gives_high_auc_and_small_permutation_p(signal_results):
    result = signal_results[0]
    assert result["auc"] > 0.9
    assert result["auc_ci_low"] <= result["auc"] <= result["auc_ci_high"]
    assert result["n_subjects"] == 24 and result["n_positive"] == 12
    assert 0.3 < result["null_auc_mean"] < 0.7
    assert result["permutation_p"] == pytest.approx(1 / 6)  # smallest possible with 5 permutations
    assert len(result["null_auc"]) == 5
    json.dumps(result, allow_nan=False)


def test_no_signal_gives_auc_near_chance():
    aucs = [
        run(make_cohort(signal=0.0, seed=seed), task="tc_vs_mimics", seed=seed)["auc"]
        for seed in range(5)
    ]
    assert 0.4 <= np.mean(aucs) <= 0.6


def test_nested_selection_does_not_leak_while_selecting_on_all_data_does():
    rng = np.random.default_rng(11)
    n, p = 40, 2000
    features = pd.DataFrame(
        rng.normal(size=(n, p)),
        index=[f"s{i:02d}" for i in range(n)],
        columns=[f"ct_original_noise_{j:04d}" for j in range(p)],
    )
    labels = pd.Series(np.repeat(["tc", "sarcoma"], n // 2), index=features.index)
    y = task_labels(labels, "tc_vs_sarcoma").to_numpy()
    # Wrong: choose the 10 best features on every subject, then cross-validate.
    chosen = SelectKBest(f_classif, k=10).fit_transform(features.to_numpy(), y)
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    leaky = cross_val_predict(LogisticRegression(), chosen, y, cv=cv, method="predict_proba")
    leaky_auc = roc_auc_score(y, leaky[:, 1])
    nested = evaluate(
        features=features, labels=labels, task="tc_vs_sarcoma", feature_set="ct",
        model="logreg_elasticnet", cv=FAST_CV, seed=0,
    )  # fmt: skip
    assert leaky_auc > 0.8
    assert nested["auc"] < 0.7


def test_evaluate_is_deterministic(signal_cohort):
    small = {"classifier__n_estimators": [25], "classifier__min_samples_leaf": [1, 3]}
    first = run(signal_cohort, model="random_forest", feature_set="conventional", param_grid=small)
    second = run(signal_cohort, model="random_forest", feature_set="conventional", param_grid=small)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_threshold_comes_from_training_folds(signal_results):
    records = pd.DataFrame(signal_results[1]["predictions"])
    assert (records.groupby(["repeat", "fold"])["threshold"].nunique() == 1).all()
    expected = (records["y_score"] >= records["threshold"]).astype(int)
    assert (records["y_pred"] == expected).all()
    assert len(records) == 2 * signal_results[1]["n_subjects"]  # every subject once per repeat


def test_small_class_reduces_folds_with_a_warning():
    features, labels, sites, clinical = make_cohort(seed=2)
    keep = (
        labels.index[(labels != "tc").to_numpy()].tolist()
        + labels.index[labels == "tc"][:3].tolist()
    )
    result = run((features.loc[keep], labels.loc[keep], sites, clinical), task="tc_vs_sarcoma")
    assert any("using 3 folds" in note for note in result["warnings"])
    keep = (
        labels.index[(labels != "tc").to_numpy()].tolist()
        + labels.index[labels == "tc"][:1].tolist()
    )
    with pytest.raises(ConfigError, match="at least 2 per class"):
        run((features.loc[keep], labels.loc[keep], sites, clinical), task="tc_vs_sarcoma")


def test_every_model_survives_the_smallest_inner_splits():
    """12 subjects, multiclass: an inner training split holds 2 (or 1) subjects of a class. The
    SVM's internal 3-fold calibration used to stop such a row with a ValueError."""
    features, labels, sites, clinical = make_cohort(n_per_class=4, signal=2.0, seed=5)
    cv = {"outer_folds": 3, "outer_repeats": 1, "inner_folds": 3, "bootstrap": 100}
    for model in MODELS:
        result = run((features, labels, sites, clinical), task="multiclass", model=model, cv=cv)
        assert result["n_subjects"] == 12 and 0.5 < result["auc"] <= 1.0, (model, result["auc"])


def test_platt_svc_calibrates_with_few_subjects_per_class():
    from calcirad.model.pipelines import PlattSVC

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (6, 3)), rng.normal(3, 1, (2, 3))])
    y = np.array([0] * 6 + [1] * 2)
    proba = PlattSVC(random_state=0).fit(X, y).predict_proba(X)  # 2-fold calibration
    assert proba.shape == (8, 2) and np.allclose(proba.sum(axis=1), 1)
    with pytest.warns(UserWarning, match="1 training subject"):
        single = PlattSVC(random_state=0).fit(X[:7], y[:7])
    assert single.predict_proba(X).shape == (8, 2)


def test_leave_one_site_out_and_multiclass(signal_cohort):
    result = run(signal_cohort, cv=FAST_CV | {"group_by_site": True}, task="multiclass")
    assert {r["repeat"] for r in result["predictions"]} == {0}
    assert {r["fold"] for r in result["predictions"]} == {0, 1, 2}
    assert result["sensitivity"] is None and result["auc"] > 0.6
    assert any("outer_repeats ignored" in note for note in result["warnings"])
    with pytest.raises(ConfigError, match="unknown cv"):
        run(signal_cohort, cv={"outer_fold": 3})


def test_impute_rule_keeps_subjects_missing_a_modality():
    cohort = make_cohort(signal=2.0, missing_fraction=0.3, seed=4)
    dropped = run(cohort, feature_set="ct+pet", missing="drop")
    imputed = run(cohort, feature_set="ct+pet", missing="impute")
    assert imputed["n_subjects"] == 24 > dropped["n_subjects"]
    assert dropped["n_dropped"] == 24 - dropped["n_subjects"]


# --- summary tables -----------------------------------------------------------------------------


def test_performance_table_order_and_columns(signal_results):
    table = performance_table(list(reversed(signal_results)))
    assert table["feature_set"].tolist() == ["ct", "conventional", "all"]
    assert list(table.columns[:8]) == [
        "task", "feature_set", "model", "n_subjects", "n_positive", "n_features", "auc", "auc_ci_low",
    ]  # fmt: skip
    for column in ("sensitivity", "brier", "calibration_slope", "null_auc_mean", "permutation_p"):
        assert column in table.columns


def test_comparison_table_against_conventional(signal_results):
    table = comparison_table(signal_results)
    assert table["feature_set"].tolist() == ["ct", "all"]
    row = table.iloc[0]
    assert row["difference_ci_low"] <= row["auc_difference"] <= row["difference_ci_high"]
    assert 0 <= row["p_bootstrap"] <= 1 and 0 <= row["p_delong"] <= 1


def test_top_features_prefer_informative_columns(signal_results):
    table = top_features_table(signal_results, top=3)
    top_all = table[table["feature_set"] == "all"]
    assert len(top_all) == 3 and top_all["rank"].tolist() == [1, 2, 3]
    informative = {
        f"{m}_original_firstorder_f{j:02d}" for m in ("ct", "t1", "t2", "pet") for j in range(3)
    }
    informative |= {
        "ct_conv_volume_ml",
        "ct_conv_mean_hu",
        "ct_conv_max_hu",
        "ct_conv_calcified_fraction",
    }
    assert set(top_all["feature"]) <= informative
