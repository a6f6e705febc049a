"""Step 3 tables: per-modality feature tables and the wide table of all modalities."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from calcirad.atomic import atomic_path
from calcirad.features import feature_provenance
from calcirad.steps.common import STATUS_OK, log, read_json, write_json

# How per-modality tables are named in the wide table: t1 features become t1_<name>, and so on.
PREFIX_SEPARATOR = "_"


def write_modality_table(
    *, records: list[str | Path], modality: str, out_csv: str | Path
) -> pd.DataFrame:
    """One row per subject with features on this modality: ``subject`` then feature columns."""
    rows = []
    for path in records:
        record = read_json(path)
        if record["status"] == STATUS_OK:
            rows.append({"subject": record["subject"], **record["features"]})
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=["subject"])
    table = table.sort_values("subject", kind="stable")
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n", float_format="%.10g")
    log.info("%s: %d subjects x %d features", modality, len(table), table.shape[1] - 1)
    return table


def write_wide_table(
    *,
    tables: dict[str, str | Path],
    params_files: dict[str, str | Path],
    out_csv: str | Path,
    out_provenance: str | Path,
) -> pd.DataFrame:
    """Join the per-modality tables into one wide table, columns prefixed ``<modality>_``."""
    wide = None
    for modality, path in sorted(tables.items()):
        table = pd.read_csv(path, dtype={"subject": str}).set_index("subject")
        table = table.add_prefix(f"{modality}{PREFIX_SEPARATOR}")
        wide = table if wide is None else wide.join(table, how="outer")
    wide = wide.sort_index()
    wide.index.name = "subject"
    with atomic_path(out_csv) as tmp:
        wide.to_csv(tmp, lineterminator="\n", float_format="%.10g")
    provenance = {
        modality: {**feature_provenance(Path(params_file)), "parameter_file": str(params_file)}
        for modality, params_file in sorted(params_files.items())
    }
    write_json(out_provenance, provenance)
    return wide
