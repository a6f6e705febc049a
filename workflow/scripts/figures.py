"""Thin adapter: rule figures -> calcirad.steps.report.write_figures."""

from pathlib import Path

from calcirad.steps.common import job_log
from calcirad.steps.report import write_figures

with job_log(snakemake.log[0]):
    write_figures(
        results=list(snakemake.input.results),
        null=snakemake.input.null,
        task=snakemake.wildcards.task,
        out_dir=Path(snakemake.output[0]).parent,
    )
