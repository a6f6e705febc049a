"""Thin adapter: rule ingest -> calcirad.steps.ingest.run_ingest."""

from calcirad.steps.common import job_log
from calcirad.steps.ingest import run_ingest

with job_log(snakemake.log[0]):
    run_ingest(
        subject=snakemake.wildcards.subject,
        study_dir=snakemake.input.study,
        rules=dict(snakemake.params.rules),
        pins=dict(snakemake.params.pins),
        modalities=list(snakemake.params.modalities),
        out_json=snakemake.output[0],
    )
