"""Thin adapter: rule segment -> calcirad.steps.segment.run_segment."""

from calcirad.steps.common import job_log
from calcirad.steps.segment import run_segment

with job_log(snakemake.log[0]):
    run_segment(
        subject=snakemake.wildcards.subject,
        nifti_dir=snakemake.input.nifti,
        out_dir=snakemake.output[0],
        segmentation=dict(snakemake.params.segmentation),
        truth=snakemake.input.truth[0] if snakemake.input.truth else None,
        truth_bone=snakemake.input.truth[1] if len(snakemake.input.truth) > 1 else None,
        user_masks={
            name.removeprefix("mask_"): path
            for name, path in snakemake.input.items()
            if name.startswith("mask_")
        },
    )
