"""Thin adapter: rule segmentation_table -> calcirad.steps.report.write_segmentation_table."""

from pathlib import Path

from calcirad.steps.common import job_log
from calcirad.steps.report import write_segmentation_table
from calcirad.steps.segment import STATUS_FILE

with job_log(snakemake.log[0]):
    write_segmentation_table(
        records=[Path(d) / STATUS_FILE for d in snakemake.input], out_csv=snakemake.output[0]
    )
