"""Step 2: the CT lesion mask of a subject, carried onto every other modality's grid; QC figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from calcirad.atomic import atomic_path
from calcirad.errors import SubjectInputError
from calcirad.segment import carry_mask, segment_ct, segmentation_metrics, select_lesions
from calcirad.steps.common import STATUS_FAILED, STATUS_OK, failure, log, read_json, write_json

STATUS_FILE = "segmentation.json"
LABELS_FILE = "lesion_labels.nii.gz"


def write_image(image: sitk.Image, path: str | Path) -> None:
    """Write a SimpleITK image atomically (NIfTI written by SimpleITK: LPS -> RAS handled)."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def available_images(nifti_dir: str | Path) -> dict[str, sitk.Image]:
    """The converted images of one subject, keyed by modality (absent modalities are missing)."""
    images = {}
    for path in sorted(Path(nifti_dir).glob("*.nii.gz")):
        images[path.name.removesuffix(".nii.gz")] = sitk.ReadImage(str(path))
    return images


def _volume_ml(mask: sitk.Image) -> float:
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * voxel_ml


def run_segment(
    *,
    subject: str,
    nifti_dir: str | Path,
    out_dir: str | Path,
    segmentation: dict,
    truth: str | Path | None = None,
) -> dict:
    """Segment the lesion(s) on CT and write ``out_dir/{modality}.nii.gz`` for every modality.

    ``segmentation`` is the config slice: method, threshold_hu, lesions (all/largest/per_side),
    carry (nearest/partial_volume), partial_volume_threshold, params. Writes ``segmentation.json``
    with per-modality source, lesion count, volume (ml) and, when ``truth`` is given, Dice/HD95.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status: dict = {"subject": subject, "stage": "segment", "modalities": {}, "failures": []}
    images = available_images(nifti_dir)
    try:
        if "ct" not in images:
            raise SubjectInputError(
                "no converted CT, so no automatic lesion mask",
                subject=subject,
                stage="segment",
                hint="see results/tables/failures.csv for the conversion error, or give mask_ct",
            )
        params = {"threshold_hu": segmentation["threshold_hu"], **segmentation.get("params", {})}
        labels = segment_ct(images["ct"], method=segmentation["method"], params=params)
        write_image(labels, out_dir / LABELS_FILE)
        ct_mask = select_lesions(labels, policy=segmentation["lesions"])
        n_lesions = int(sitk.GetArrayViewFromImage(labels).max())
        for modality, image in sorted(images.items()):
            mask = (
                ct_mask
                if modality == "ct"
                else carry_mask(
                    ct_mask,
                    image,
                    method=segmentation["carry"],
                    threshold=segmentation["partial_volume_threshold"],
                )
            )
            write_image(mask, out_dir / f"{modality}.nii.gz")
            status["modalities"][modality] = {
                "source": "auto",
                "defined_by": ["ct"],
                "lesions": n_lesions,
                "volume_ml": _volume_ml(mask),
            }
        if truth is not None and Path(truth).exists():
            truth_image = sitk.ReadImage(str(truth))
            status["modalities"]["ct"].update(segmentation_metrics(ct_mask, truth_image))
        status["status"] = STATUS_OK
    except SubjectInputError as error:
        log.error("%s", error)
        status["status"] = STATUS_FAILED
        status["failures"].append(failure(subject=subject, stage="segment", error=error))
    write_json(out_dir / STATUS_FILE, status)
    return status


def run_qc(*, subject: str, nifti_dir: str | Path, masks_dir: str | Path, out_png: str | Path):
    """The QC figure of a subject: each modality's slice of largest lesion area, mask outlined."""
    from calcirad.qc import qc_figure

    images = available_images(nifti_dir)
    masks = {
        m: sitk.ReadImage(str(Path(masks_dir) / f"{m}.nii.gz"))
        for m in images
        if (Path(masks_dir) / f"{m}.nii.gz").exists()
    }
    seg = read_json(Path(masks_dir) / STATUS_FILE)
    title = f"{subject}" + ("" if seg["status"] == STATUS_OK else " (segmentation failed)")
    qc_figure(images=images, masks=masks, out_png=Path(out_png), title=title)
