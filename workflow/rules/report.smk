# Stage 5: cohort-level tables and figures. `snakemake --report results/report.html` then gathers
# every output wrapped in report() into one self-contained HTML file.


rule failures:
    input:
        ingest=expand("results/ingest/{subject}.json", subject=SUBJECTS),
        nifti=expand("results/nifti/{subject}", subject=SUBJECTS),
        masks=expand("results/masks/{subject}", subject=SUBJECTS),
        features=expand(
            "results/features/subjects/{subject}/{modality}.json",
            subject=SUBJECTS,
            modality=MODALITIES,
        ),
    output:
        report(
            "results/tables/failures.csv",
            caption="../report/failures.rst",
            category="Data",
        ),
    log:
        "logs/failures.log",
    benchmark:
        "benchmarks/failures.tsv"
    conda:
        "../../envs/model.yaml"
    script:
        "../scripts/failures.py"


rule cohort_table:
    input:
        features=expand(
            "results/features/subjects/{subject}/{modality}.json",
            subject=SUBJECTS,
            modality=MODALITIES,
        ),
        segmentation="results/tables/segmentation.csv",
        failures="results/tables/failures.csv",
    output:
        report(
            expand("results/tables/cohort.{ext}", ext=TABLE_FORMATS),
            caption="../report/cohort.rst",
            category="Results",
        ),
    log:
        "logs/cohort_table.log",
    benchmark:
        "benchmarks/cohort_table.tsv"
    conda:
        "../../envs/model.yaml"
    params:
        samples=samples[["subject", "label", "site"]].to_dict(orient="records"),
        provenance=table_provenance(),
        code=CODE["tables"],
    script:
        "../scripts/cohort_table.py"


rule figures:
    input:
        results=expand(
            "results/models/{{task}}/{feature_set}/{model}.json",
            feature_set=FEATURE_SETS,
            model=MODELS,
        ),
        null="results/models/{task}/permutation_null.json",
    output:
        report(
            expand(
                "results/figures/{figure}_{{task}}.{ext}",
                figure=FIGURES,
                ext=FIGURE_FORMATS,
            ),
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/figures/{task}.log",
    benchmark:
        "benchmarks/figures/{task}.tsv"
    conda:
        "../../envs/model.yaml"
    params:
        code=CODE["tables"],
    script:
        "../scripts/figures.py"
