"""Thin adapter: rule features_table -> calcirad.steps.feature_tables.write_modality_table."""

from calcirad.steps.common import job_log
from calcirad.steps.feature_tables import write_modality_table

with job_log(snakemake.log[0]):
    write_modality_table(
        records=list(snakemake.input),
        modality=snakemake.wildcards.modality,
        out_csv=snakemake.output[0],
    )
