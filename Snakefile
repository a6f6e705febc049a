# calcirad: DICOM studies -> NIfTI -> lesion masks -> radiomic features -> validated models -> tables.
# Run:    snakemake --cores all --profile profiles/local
# Report: snakemake --report results/report.html


from snakemake.utils import min_version

min_version("9.0")


# The shipped defaults, found beside this Snakefile whatever the run directory; a user's
# --configfile is merged over them.
configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    subject="[A-Za-z0-9][A-Za-z0-9_.-]*",
    modality="|".join(MODALITIES),
    task="|".join(TASKS),
    feature_set="[a-z0-9+]+",
    model="[a-z0-9_]+",


include: "workflow/rules/ingest.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/stability.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        "results/tables/series_inventory.csv",
        "results/tables/failures.csv",
        "results/tables/segmentation.csv",
        expand("results/qc/{subject}.png", subject=SUBJECTS),
        "results/features/all.csv",
        IBSI_TARGETS,
        STABILITY_TARGETS,
        expand("results/tables/{table}.{ext}", table=MODEL_TABLES, ext=TABLE_FORMATS),
        expand("results/tables/cohort.{ext}", ext=TABLE_FORMATS),
        expand(
            "results/figures/{figure}_{task}.{ext}",
            figure=FIGURES,
            task=TASKS,
            ext=FIGURE_FORMATS,
        ),
