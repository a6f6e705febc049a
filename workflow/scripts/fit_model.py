"""Thin adapter: rule fit_model -> calcirad.steps.model.run_model."""

from calcirad.steps.common import job_log
from calcirad.steps.model import run_model

with job_log(snakemake.log[0]):
    run_model(
        features_csv=snakemake.input.features,
        labels=dict(snakemake.params.labels),
        sites=dict(snakemake.params.sites),
        clinical=dict(snakemake.params.clinical),
        task=snakemake.wildcards.task,
        feature_set=snakemake.wildcards.feature_set,
        model=snakemake.wildcards.model,
        settings=dict(snakemake.params.settings),
        out_json=snakemake.output[0],
        # a list: the stability table when model.min_icc is set, else empty
        stability_csv=next(iter(snakemake.input.stability), None),
    )
