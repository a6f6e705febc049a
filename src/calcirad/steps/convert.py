"""Step 1b: convert each chosen series of a subject to NIfTI (dcm2niix) with verification."""

from __future__ import annotations

import tempfile
from pathlib import Path

from calcirad.convert import convert_series
from calcirad.errors import SubjectInputError
from calcirad.steps.common import STATUS_FAILED, STATUS_OK, failure, log, read_json, write_json

STATUS_FILE = "status.json"


def run_convert(
    *,
    subject: str,
    inventory_json: str | Path,
    study_dir: str | Path,
    out_dir: str | Path,
    conversion: dict,
) -> dict:
    """Write ``out_dir/{modality}.nii.gz`` + ``.json`` for every chosen series, and ``status.json``.

    A series that fails verification is left out (no NIfTI) and recorded as a failure; the
    subject's other modalities are still converted.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_dir = Path(study_dir)
    inventory = read_json(inventory_json)
    status: dict = {"subject": subject, "stage": "convert", "modalities": {}, "failures": []}
    for modality, series in sorted(inventory.get("chosen", {}).items()):
        files = [study_dir / f for f in series["files"]]
        try:
            with tempfile.TemporaryDirectory(prefix=f"calcirad_{subject}_{modality}_") as work:
                verification = convert_series(
                    subject=subject,
                    modality=modality,
                    files=files,
                    out_nifti=out_dir / f"{modality}.nii.gz",
                    out_sidecar=out_dir / f"{modality}.json",
                    work_dir=Path(work),
                    suv=conversion if modality == "pet" else None,
                )
            status["modalities"][modality] = {"status": STATUS_OK, "verification": verification}
            log.info("subject %s %s: converted and verified", subject, modality)
        except SubjectInputError as error:
            log.error("%s", error)
            status["modalities"][modality] = {"status": STATUS_FAILED, "reason": str(error)}
            status["failures"].append(
                failure(subject=subject, stage="convert", error=error, modality=modality)
            )
    status["status"] = (
        STATUS_OK
        if any(m["status"] == STATUS_OK for m in status["modalities"].values())
        else STATUS_FAILED
    )
    write_json(out_dir / STATUS_FILE, status)
    return status
