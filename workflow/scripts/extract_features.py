"""Thin adapter: rule extract_features -> calcirad.steps.features.run_features."""

from calcirad.steps.common import job_log
from calcirad.steps.features import run_features

with job_log(snakemake.log[0]):
    run_features(
        subject=snakemake.wildcards.subject,
        modality=snakemake.wildcards.modality,
        nifti_dir=snakemake.input.nifti,
        masks_dir=snakemake.input.masks,
        params_file=snakemake.input.params,
        out_json=snakemake.output[0],
    )
