"""Thin adapter: rule ibsi_compliance -> calcirad.ibsi.write_compliance."""

from pathlib import Path

from calcirad.ibsi import summary, write_compliance
from calcirad.steps.common import job_log

with job_log(snakemake.log[0]) as log:
    table = write_compliance(
        reference_csv=Path(snakemake.input.reference),
        image=Path(snakemake.input.image),
        mask=Path(snakemake.input.mask),
        params_dir=Path(snakemake.input.params[0]).parent,
        out_csv=Path(snakemake.output[0]),
    )
    log.info("%s", summary(table))
