"""Thin adapter: rule stability_features -> calcirad.steps.stability.run_stability."""

from calcirad.steps.common import job_log
from calcirad.steps.stability import run_stability

with job_log(snakemake.log[0]):
    run_stability(
        subject=snakemake.wildcards.subject,
        modality=snakemake.wildcards.modality,
        nifti_dir=snakemake.input.nifti,
        masks_dir=snakemake.input.masks,
        params_file=snakemake.input.params,
        perturbations=list(snakemake.params.perturbations),
        out_json=snakemake.output[0],
    )
