"""Step 1: find and classify a subject's DICOM series; aggregate the series inventory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from calcirad.atomic import atomic_path
from calcirad.dicom import INVENTORY_COLUMNS, build_inventory, redact
from calcirad.errors import SubjectInputError
from calcirad.steps.common import STATUS_FAILED, STATUS_OK, failure, log, read_json, write_json

INTEGER_COLUMNS = {"rows", "columns", "n_files", "n_slices", "series_number"}


def _relative(path: str, study_dir: Path) -> str:
    """Paths in results/ are relative to the study folder: folder names can carry identifiers."""
    p = Path(path)
    return str(p.relative_to(study_dir)) if p.is_absolute() else str(p)


def _used_or_not(row: dict, modalities: list[str]) -> dict:
    """The inventory says what the run uses: a chosen series of an unrequested modality is not."""
    if row.get("chosen") and row.get("modality") not in modalities:
        return {
            **row,
            "chosen": False,
            "reason": f"{row['reason']}; not used: {row['modality']} is not in config `modalities`",
        }
    return row


def _unreadable_beside(files: list[str], unreadable: list[tuple[str, str]]) -> list[str]:
    """Names of the unreadable DICOM files lying in a folder of the series ``files``."""
    folders = {Path(f).parent for f in files}
    return sorted(Path(path).name for path, _ in unreadable if Path(path).parent in folders)


def run_ingest(
    *,
    subject: str,
    study_dir: str | Path,
    rules: dict,
    pins: dict[str, str],
    modalities: list[str],
    out_json: str | Path,
) -> dict:
    """Discover the subject's series and record the one chosen per modality.

    Writes ``out_json`` with ``status`` ok/failed, the inventory rows and, per chosen modality, the
    series' files relative to ``study_dir``. A study with no usable series is a failure record,
    not an exception, so the other subjects go on.
    """
    study_dir = Path(study_dir).resolve()
    record: dict = {"subject": subject, "stage": "ingest", "rows": [], "chosen": {}, "failures": []}
    try:
        inventory = build_inventory(subject=subject, study_dir=study_dir, rules=rules, pins=pins)
        record["rows"] = [_used_or_not(row, modalities) for row in inventory.rows]
        for modality, series in sorted(inventory.chosen.items()):
            if modality not in modalities:
                continue
            broken = [
                redact(name, series.identifiers)
                for name in _unreadable_beside(series.files, inventory.unreadable)
            ]
            if broken:
                record["rows"] = [
                    {
                        **row,
                        "chosen": False,
                        "reason": f"{row['reason']}; not used: unreadable files",
                    }
                    if row["series_uid"] == series.series_uid
                    else row
                    for row in record["rows"]
                ]
                error = SubjectInputError(
                    f"{len(broken)} file(s) in the folder of this series have the DICOM marker "
                    f"but an unreadable header ({', '.join(broken[:5])}): likely truncated "
                    "slices of it; converting the rest would give an incomplete volume",
                    subject=subject,
                    stage="ingest",
                    series=redact(
                        f"{series.series_number} {series.description}".strip(), series.identifiers
                    ),
                    file=broken[0],
                    hint="re-export or re-copy the series from the archive, or delete the "
                    "broken file(s) if they do not belong to it",
                )
                log.error("%s", error)
                record["failures"].append(
                    failure(subject=subject, stage="ingest", error=error, modality=modality)
                )
                continue
            info = series.to_dict()
            info["files"] = [_relative(f, study_dir) for f in info["files"]]
            record["chosen"][modality] = info
        if not record["chosen"]:
            raise SubjectInputError(
                f"no usable series among {len(inventory.rows)} found "
                f"(looked for {', '.join(modalities)})",
                subject=subject,
                stage="ingest",
                file=str(study_dir.name),
                hint="check the folder in the sample sheet, or pin series with series_<modality>",
            )
        record["status"] = STATUS_OK
    except SubjectInputError as error:
        log.error("%s", error)
        record["status"] = STATUS_FAILED
        record["failures"].append(failure(subject=subject, stage="ingest", error=error))
    log.info("subject %s: chose %s", subject, ", ".join(record["chosen"]) or "nothing")
    write_json(out_json, record)
    return record


def write_series_inventory(*, inventories: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Concatenate every subject's inventory rows into ``series_inventory.csv``."""
    rows = []
    for path in inventories:
        rows.extend(read_json(path)["rows"])
    table = pd.DataFrame(rows)
    # Counts stay integers in the CSV even where a non-image series (RTSTRUCT) has none.
    for column in INTEGER_COLUMNS & set(table.columns):
        table[column] = pd.to_numeric(table[column]).astype("Int64")
    if not table.empty:
        order = [c for c in ("subject", "folder", "series_number") if c in table.columns]
        table = table.sort_values(order, kind="stable")
        columns = [c for c in INVENTORY_COLUMNS if c in table.columns]
        table = table[columns + sorted(set(table.columns) - set(columns))]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    return table
