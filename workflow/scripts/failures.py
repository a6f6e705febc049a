"""Thin adapter: rule failures -> calcirad.steps.report.write_failures."""

from pathlib import Path

from calcirad.steps.common import job_log
from calcirad.steps.convert import STATUS_FILE as CONVERT_STATUS
from calcirad.steps.report import write_failures
from calcirad.steps.segment import STATUS_FILE as SEGMENT_STATUS

with job_log(snakemake.log[0]):
    records = (
        list(snakemake.input.ingest)
        + [Path(d) / CONVERT_STATUS for d in snakemake.input.nifti]
        + [Path(d) / SEGMENT_STATUS for d in snakemake.input.masks]
        + list(snakemake.input.features)
    )
    write_failures(records=records, out_csv=snakemake.output[0])
