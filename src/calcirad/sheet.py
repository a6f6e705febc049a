"""The sample sheet: one row per subject, checked before any job starts.

Column types and allowed values are checked by the JSON schema of the workflow
(``workflow/schemas/samples.schema.yaml``); this module adds the checks a schema cannot express
(duplicate subjects, study folders that do not exist or lie outside the data root) and resolves
paths. Relative ``dicom`` and ``mask_*`` paths are relative to the sheet's own folder, so a sheet
and its data can be moved together.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pandas as pd

from calcirad.errors import ConfigError

REQUIRED_COLUMNS = ("subject", "label", "site", "dicom")
LABELS = ("tc", "sarcoma", "mimic")
CLINICAL_COLUMNS = ("age", "sex", "eskd", "phosphate_mg_dl")
SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # as in workflow/schemas/samples.schema.yaml


def _empty_cells_as_none(sheet: pd.DataFrame) -> pd.DataFrame:
    """object dtype with None for empty cells: pandas' string dtype (and schema validation, which
    rebuilds the frame) turns them into NaN, which is truthy and would read as a path."""
    sheet = sheet.astype(object)
    return sheet.where(sheet.notna() & ~sheet.isin(["", "NA", "nan"]), None)


def read_sheet(path: str | Path) -> pd.DataFrame:
    """Read the sheet as strings (IDs like ``007`` must stay ``007``); empty cells become None."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sample sheet {path} does not exist (config key `samples`)")
    # Only whole lines starting with '#' are comments: a '#' inside a folder name is data.
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    text = "".join(line for line in lines if not line.startswith("#"))
    sheet = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    sheet = _empty_cells_as_none(sheet.apply(lambda column: column.str.strip()))
    missing = [c for c in REQUIRED_COLUMNS if c not in sheet.columns]
    if missing:
        raise ConfigError(
            f"sample sheet {path} lacks required column(s) {', '.join(missing)}; "
            f"it has {', '.join(sheet.columns)} (tab-separated, header on the first line)"
        )
    return sheet


def check_sheet(
    sheet: pd.DataFrame, *, sheet_path: str | Path, data_root: str | Path | None = None
) -> pd.DataFrame:
    """Check what the schema cannot and return the sheet indexed by subject with absolute paths.

    Raises ConfigError naming the row (1-based, header excluded), the subject and the column.
    """
    sheet_path = Path(sheet_path)
    base = sheet_path.resolve().parent
    sheet = _empty_cells_as_none(sheet)
    problems: list[str] = []
    duplicated = sheet["subject"][sheet["subject"].duplicated(keep=False)]
    for subject in sorted(set(duplicated)):
        rows = [str(i + 1) for i in sheet.index[sheet["subject"] == subject]]
        problems.append(
            f"subject {subject!r} appears on rows {', '.join(rows)}: IDs must be unique"
        )
    root = Path(data_root).resolve() if data_root else None
    resolved = []
    for row_number, row in enumerate(sheet.itertuples(index=False), start=1):
        where = f"row {row_number} (subject {row.subject})"
        if not SUBJECT_ID.fullmatch(str(row.subject or "")):
            problems.append(
                f"{where}: subject ID {row.subject!r} must start with a letter or digit and hold "
                "only letters, digits, '_', '.' and '-' (it names every output file)"
            )
        if row.label not in LABELS:
            problems.append(f"{where}: label {row.label!r} is not one of {', '.join(LABELS)}")
        study = (base / row.dicom).resolve() if row.dicom else None
        if study is None or not study.is_dir():
            problems.append(f"{where}: DICOM folder {row.dicom!r} does not exist (column `dicom`)")
        elif root is not None and not study.is_relative_to(root):
            problems.append(
                f"{where}: DICOM folder {row.dicom!r} is outside data_root {str(root)!r}"
            )
        resolved.append(str(study) if study else None)
    if problems:
        raise ConfigError(f"sample sheet {sheet_path}:\n  " + "\n  ".join(problems))
    sheet = sheet.copy()
    sheet["dicom"] = pd.Series(resolved, index=sheet.index, dtype=object)
    for column in [c for c in sheet.columns if c.startswith("mask_")]:
        paths = [str((base / value).resolve()) if value else None for value in sheet[column]]
        sheet[column] = pd.Series(paths, index=sheet.index, dtype=object)
    return sheet.set_index("subject", drop=False)


def load_samples(path: str | Path, *, data_root: str | Path | None = None) -> pd.DataFrame:
    """Read and check the sheet; see :func:`check_sheet`."""
    return check_sheet(read_sheet(path), sheet_path=path, data_root=data_root)
