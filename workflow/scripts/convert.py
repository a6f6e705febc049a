"""Thin adapter: rule convert -> calcirad.steps.convert.run_convert."""

from calcirad.steps.common import job_log
from calcirad.steps.convert import run_convert

with job_log(snakemake.log[0]):
    run_convert(
        subject=snakemake.wildcards.subject,
        inventory_json=snakemake.input.inventory,
        study_dir=snakemake.params.study,
        out_dir=snakemake.output[0],
        conversion=dict(snakemake.params.conversion),
    )
