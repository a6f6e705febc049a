"""Thin adapter: rule model_tables -> calcirad.steps.model.write_model_tables."""

from pathlib import Path

from calcirad.steps.common import job_log
from calcirad.steps.model import write_model_tables
from calcirad.tables import package_versions

with job_log(snakemake.log[0]):
    write_model_tables(
        results=list(snakemake.input.results),
        nulls=list(snakemake.input.nulls),
        tables_dir=Path(snakemake.output[0]).parent,
        provenance={**snakemake.params.provenance, "packages": package_versions()},
    )
