"""Step 3: radiomic + conventional features of one subject and modality; per-modality tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from calcirad.atomic import atomic_path
from calcirad.errors import SubjectInputError
from calcirad.features import extract_features, feature_provenance
from calcirad.steps.common import (
    STATUS_ABSENT,
    STATUS_EXCLUDED,
    STATUS_FAILED,
    STATUS_OK,
    failure,
    log,
    read_json,
    write_json,
)
from calcirad.steps.segment import MUSCLE_PREFIX

# How per-modality tables are named in the wide table: t1 features become t1_<name>, and so on.
PREFIX_SEPARATOR = "_"


def modality_inputs(
    *, modality: str, nifti_dir: str | Path, masks_dir: str | Path
) -> tuple[dict[str, Path | None], dict | None]:
    """The files feature extraction of one modality reads, or why it cannot run.

    Returns (paths, skip): ``paths`` holds ``image_path``, ``mask_path`` and ``muscle_mask_path``
    (None without an MR muscle reference), the keyword arguments of ``extract_features``; ``skip``
    is None, or the status to record: ``absent`` when the subject has no such series (normal:
    gadolinium withheld, no PET), ``excluded`` when segmentation failed (it recorded why;
    counting the subject again here would report one problem as two).
    """
    image = Path(nifti_dir) / f"{modality}.nii.gz"
    mask = Path(masks_dir) / f"{modality}.nii.gz"
    muscle = Path(masks_dir) / f"{MUSCLE_PREFIX}{modality}.nii.gz"
    paths = {
        "image_path": image,
        "mask_path": mask,
        "muscle_mask_path": muscle if muscle.exists() else None,
    }
    if not image.exists():
        return paths, {"status": STATUS_ABSENT}
    if not mask.exists():
        return paths, {"status": STATUS_EXCLUDED, "reason": "no lesion mask (segmentation failed)"}
    return paths, None


def run_features(
    *,
    subject: str,
    modality: str,
    nifti_dir: str | Path,
    masks_dir: str | Path,
    params_file: str | Path,
    out_json: str | Path,
) -> dict:
    """Extract one subject's features on one modality; write a status record with them.

    status is ``absent`` when the subject has no such series (normal: gadolinium withheld, no PET),
    ``excluded`` when an earlier stage failed for it (recorded there), ``failed`` when extraction
    itself refused the image or mask (reason recorded), ``ok`` otherwise.
    """
    record: dict = {"subject": subject, "modality": modality, "stage": "features", "failures": []}
    paths, skip = modality_inputs(modality=modality, nifti_dir=nifti_dir, masks_dir=masks_dir)
    if skip:
        record.update(skip)
    else:
        try:
            features = extract_features(**paths, params_file=Path(params_file), modality=modality)
            record.update(status=STATUS_OK, features=features)
        except SubjectInputError as error:
            error.subject = error.subject or subject
            error.stage = error.stage or "features"
            log.error("%s", error)
            record["status"] = STATUS_FAILED
            record["failures"].append(
                failure(subject=subject, stage="features", error=error, modality=modality)
            )
    write_json(out_json, record)
    return record


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
