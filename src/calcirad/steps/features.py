"""Step 3: radiomic + conventional features of one subject and modality.

Imported by every extraction job: it keeps to what extraction needs (no pandas; tables are in
``calcirad.steps.feature_tables``), because a cohort runs one such job per subject and modality.
"""

from __future__ import annotations

from pathlib import Path

from calcirad.errors import SubjectInputError
from calcirad.features import extract_features
from calcirad.steps.common import (
    MUSCLE_PREFIX,
    STATUS_ABSENT,
    STATUS_EXCLUDED,
    STATUS_FAILED,
    STATUS_OK,
    failure,
    log,
    write_json,
)


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
