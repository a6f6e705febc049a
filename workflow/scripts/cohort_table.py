"""Thin adapter: rule cohort_table -> calcirad.steps.report.write_cohort_table."""

from pathlib import Path

from calcirad.steps.common import job_log
from calcirad.steps.report import write_cohort_table
from calcirad.tables import package_versions

with job_log(snakemake.log[0]):
    write_cohort_table(
        samples=list(snakemake.params.samples),
        features_records=list(snakemake.input.features),
        segmentation_csv=snakemake.input.segmentation,
        failures_csv=snakemake.input.failures,
        stem=Path(snakemake.output[0]).with_suffix(""),
        provenance={**snakemake.params.provenance, "packages": package_versions()},
    )
