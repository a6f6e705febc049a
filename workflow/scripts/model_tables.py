"""Thin adapter: rule model_tables -> calcirad.steps.model.write_model_tables."""

from pathlib import Path

from calcirad.steps.common import job_log, package_versions
from calcirad.steps.model import write_model_tables

with job_log(snakemake.log[0]):
    write_model_tables(
        results=list(snakemake.input),
        tables_dir=Path(snakemake.output[0]).parent,
        provenance={**snakemake.params.provenance, "versions": package_versions()},
    )
