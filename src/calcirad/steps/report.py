"""Step 5: cohort-level tables (failures, segmentation, cohort) and figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from calcirad.atomic import atomic_path
from calcirad.plan import FIGURES
from calcirad.steps.common import STATUS_OK, log, read_json

FAILURE_COLUMNS = ["subject", "stage", "modality", "reason"]


def _write_csv(table: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")


def write_failures(*, records: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """Every per-subject failure recorded by any stage: subject, stage, modality, reason."""
    rows = []
    for path in records:
        rows.extend(read_json(path).get("failures", []))
    table = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    table = table.sort_values(["subject", "stage", "modality"], kind="stable", na_position="first")
    _write_csv(table, out_csv)
    log.info("%d failure(s) recorded", len(table))
    return table


def write_segmentation_table(*, records: list[str | Path], out_csv: str | Path) -> pd.DataFrame:
    """subject, modality, source, lesions, volume_ml and, with ground truth, dice and hd95_mm."""
    rows = []
    for path in records:
        record = read_json(path)
        for modality, values in sorted(record.get("modalities", {}).items()):
            row = {"subject": record["subject"], "modality": modality, **values}
            row["defined_by"] = "+".join(row.get("defined_by", []))
            rows.append(row)
    columns = ["subject", "modality", "source", "defined_by", "lesions", "volume_ml"]
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=columns)
    table = table[columns + [c for c in table.columns if c not in columns]]
    table = table.sort_values(["subject", "modality"], kind="stable")
    _write_csv(table, out_csv)
    return table


def modality_availability(*, features_records: list[str | Path]) -> pd.DataFrame:
    """subject x modality table of feature status (ok / absent / failed)."""
    rows = [read_json(path) for path in features_records]
    frame = pd.DataFrame(
        [{"subject": r["subject"], "modality": r["modality"], "status": r["status"]} for r in rows]
    )
    return frame.pivot(index="subject", columns="modality", values="status").sort_index()


def write_cohort_table(
    *,
    samples: list[dict],
    features_records: list[str | Path],
    segmentation_csv: str | Path,
    failures_csv: str | Path,
    stem: str | Path,
    provenance: dict,
) -> pd.DataFrame:
    """Table 1: counts by label and site, modality availability, lesion volume, exclusions."""
    from calcirad.tables import cohort_table, write_table

    sheet = pd.DataFrame(samples).set_index("subject", drop=False)
    segmentation = pd.read_csv(segmentation_csv, dtype={"subject": str})
    ct = segmentation[segmentation["modality"] == "ct"].set_index("subject")["volume_ml"]
    failures = pd.read_csv(failures_csv, dtype={"subject": str})
    # Available = features extracted: a series that failed conversion or has no mask is not.
    status = modality_availability(features_records=features_records)
    table = cohort_table(
        samples=sheet,
        availability=status == STATUS_OK,
        volumes=ct,
        failures=failures,
    )
    write_table(
        table,
        stem=Path(stem),
        caption="Cohort: subjects by label, site, modality availability and lesion volume.",
        provenance=provenance,
    )
    return table


def write_figures(
    *, results: list[str | Path], task: str, out_dir: str | Path, null: str | Path | None = None
) -> list[Path]:
    """ROC (with bootstrap bands), calibration, confusion and importance figures of one task,
    and the permutation null of its best row (``null``: rule permutation_null's JSON).

    Files: ``out_dir/{figure}_{task}.png`` and ``.svg`` for each figure in FIGURES; confusion
    and importance show the task's best-AUC feature set and model.
    """
    from calcirad import figures

    estimable = [r for r in (read_json(p) for p in results) if r.get("predictions")]
    written: list[Path] = []
    for name in FIGURES:
        out_stem = Path(out_dir) / f"{name}_{task}"
        if not estimable:
            message = f"No model could be estimated for {task}:\nsee the performance table."
            written += figures.message_figure(message, out_stem=out_stem)
            continue
        if name == "permutation":
            written += _permutation_figure(null, task=task, out_stem=out_stem)
            continue
        draw = getattr(figures, f"{name}_figure")
        written += draw(estimable, task=task, out_stem=out_stem)
    return written


def _permutation_figure(null_json: str | Path | None, *, task: str, out_stem: Path) -> list[Path]:
    from calcirad import figures

    null = read_json(null_json) if null_json else {}
    if not null.get("null_auc"):
        reason = null.get("note", "no permutation null computed")
        return figures.message_figure(
            f"No permutation null for {task}:\n{reason}.", out_stem=out_stem
        )
    return figures.permutation_figure(null, out_stem=out_stem)
