"""Thin adapter: rule series_inventory -> calcirad.steps.ingest.write_series_inventory."""

from calcirad.steps.common import job_log
from calcirad.steps.ingest import write_series_inventory

with job_log(snakemake.log[0]):
    write_series_inventory(inventories=list(snakemake.input), out_csv=snakemake.output[0])
