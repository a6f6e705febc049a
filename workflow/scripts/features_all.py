"""Thin adapter: rule features_all -> calcirad.steps.feature_tables.write_wide_table."""

from calcirad.steps.common import job_log
from calcirad.steps.feature_tables import write_wide_table

modalities = list(snakemake.params.modalities)
with job_log(snakemake.log[0]):
    write_wide_table(
        tables=dict(zip(modalities, snakemake.input.tables, strict=True)),
        params_files=dict(zip(modalities, snakemake.input.params, strict=True)),
        out_csv=snakemake.output.table,
        out_provenance=snakemake.output.provenance,
    )
