"""Thin adapter: rule feature_stability -> calcirad.steps.stability.write_stability_table."""

from calcirad.steps.common import job_log
from calcirad.steps.stability import write_stability_table

with job_log(snakemake.log[0]):
    write_stability_table(
        records=list(snakemake.input),
        perturbations=list(snakemake.params.perturbations),
        out_csv=snakemake.output[0],
    )
