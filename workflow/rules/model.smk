# Stage 4: one job per (task, feature set, model): nested, repeated, stratified cross-validation
# with every data-dependent step inside the training folds.


rule fit_model:
    input:
        features="results/features/all.csv",
        # only when model.min_icc filters features on it (ICC is label-free: no leakage)
        stability=stability_table_input,
    output:
        "results/models/{task}/{feature_set}/{model}.json",
    log:
        "logs/model/{task}_{feature_set}_{model}.log",
    benchmark:
        "benchmarks/model/{task}_{feature_set}_{model}.tsv"
    conda:
        "../../envs/model.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        labels=sheet_column("label"),
        sites=sheet_column("site"),
        clinical=clinical_covariates(),
        settings={
            k: v
            for k, v in config["model"].items()
            # n_permutations belongs to permutation_null: changing it refits no row
            if k not in ("tasks", "feature_sets", "models", "n_permutations")
        },
        code=CODE["model"],
    script:
        "../scripts/fit_model.py"


# The leakage guard: each task's best row (highest AUC) refitted, whole nested CV included, on
# model.n_permutations permuted labellings: the null AUC distribution and the permutation p-value.
rule permutation_null:
    input:
        features="results/features/all.csv",
        stability=stability_table_input,
        results=expand(
            "results/models/{{task}}/{feature_set}/{model}.json",
            feature_set=FEATURE_SETS,
            model=MODELS,
        ),
    output:
        "results/models/{task}/permutation_null.json",
    log:
        "logs/model/{task}_permutation_null.log",
    benchmark:
        "benchmarks/model/{task}_permutation_null.tsv"
    conda:
        "../../envs/model.yaml"
    resources:
        mem_mb=2000,
        runtime=120,
    params:
        labels=sheet_column("label"),
        sites=sheet_column("site"),
        clinical=clinical_covariates(),
        settings={
            k: v
            for k, v in config["model"].items()
            if k not in ("tasks", "feature_sets", "models")
        },
        code=CODE["model"],
    script:
        "../scripts/permutation_null.py"


rule model_tables:
    input:
        results=expand(
            "results/models/{task}/{feature_set}/{model}.json",
            task=TASKS,
            feature_set=FEATURE_SETS,
            model=MODELS,
        ),
        nulls=expand("results/models/{task}/permutation_null.json", task=TASKS),
    output:
        report(
            expand(
                "results/tables/{table}.{ext}", table=MODEL_TABLES, ext=TABLE_FORMATS
            ),
            caption="../report/performance.rst",
            category="Results",
        ),
    log:
        "logs/model_tables.log",
    benchmark:
        "benchmarks/model_tables.tsv"
    conda:
        "../../envs/model.yaml"
    params:
        provenance=table_provenance(),
        code=CODE["tables"],
    script:
        "../scripts/model_tables.py"
