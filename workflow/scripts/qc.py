"""Thin adapter: rule qc -> calcirad.steps.segment.run_qc."""

from calcirad.steps.common import job_log
from calcirad.steps.segment import run_qc

with job_log(snakemake.log[0]):
    run_qc(
        subject=snakemake.wildcards.subject,
        nifti_dir=snakemake.input.nifti,
        masks_dir=snakemake.input.masks,
        out_png=snakemake.output[0],
    )
