"""Thin adapter: rule permutation_null -> calcirad.steps.model.run_permutation_null."""

from calcirad.steps.common import job_log
from calcirad.steps.model import run_permutation_null

with job_log(snakemake.log[0]):
    run_permutation_null(
        results=list(snakemake.input.results),
        task=snakemake.wildcards.task,
        settings=dict(snakemake.params.settings),
        out_json=snakemake.output[0],
        features_csv=snakemake.input.features,
        labels=dict(snakemake.params.labels),
        sites=dict(snakemake.params.sites),
        clinical=dict(snakemake.params.clinical),
        stability_csv=next(iter(snakemake.input.stability), None),
    )
