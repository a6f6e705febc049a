"""Step 2: the CT lesion mask of a subject, carried onto every other modality's grid; QC figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from calcirad.atomic import atomic_path
from calcirad.errors import SubjectInputError
from calcirad.segment import (
    carry_mask,
    extend_mask,
    muscle_reference_mask,
    read_mask_file,
    segment_ct,
    segmentation_metrics,
    select_lesions,
)
from calcirad.steps.common import STATUS_FAILED, STATUS_OK, failure, log, read_json, write_json

STATUS_FILE = "segmentation.json"
LABELS_FILE = "lesion_labels.nii.gz"
MUSCLE_PREFIX = "muscle_"  # muscle_t1.nii.gz: reference muscle on that MR grid
MR_MODALITIES = ("t1", "t2", "t1c")


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


def _muscle_reference(subject: str, ct: sitk.Image, lesion: sitk.Image) -> sitk.Image | None:
    """Muscle near the lesion, for MR lesion-to-muscle ratios; None (logged) when there is none."""
    try:
        return muscle_reference_mask(ct, lesion)
    except SubjectInputError as error:
        log.warning("subject %s: no muscle reference for MR ratios: %s", subject, error)
        return None


def _volume_ml(mask: sitk.Image) -> float:
    voxel_ml = float(np.prod(mask.GetSpacing())) / 1000.0
    return float(sitk.GetArrayViewFromImage(mask).astype(bool).sum()) * voxel_ml


def _auto_ct_mask(
    *, subject: str, images: dict[str, sitk.Image], segmentation: dict, out_dir: Path
) -> tuple[sitk.Image, list[str], int]:
    """Automatic CT lesion mask: (binary mask, modalities that defined it, lesion count)."""
    params = {"threshold_hu": segmentation["threshold_hu"], **segmentation.get("params", {})}
    labels = segment_ct(images["ct"], method=segmentation["method"], params=params)
    write_image(labels, out_dir / LABELS_FILE)
    ct_mask = select_lesions(labels, policy=segmentation["lesions"])
    n_lesions = int(sitk.GetArrayViewFromImage(labels).max())
    # The non-calcified part of a lesion (a sarcoma's solid component) is close to muscle on
    # unenhanced CT: a radiologist delineates it on T2 and PET, and so do we.
    guides = {m: images[m] for m in segmentation["extend_with"] if m in images}
    if not guides:
        return ct_mask, ["ct"], n_lesions
    extended = extend_mask(images["ct"], ct_mask, images=guides)
    return extended.mask, list(extended.sources), n_lesions


def _lesion_count(mask: sitk.Image) -> int:
    # GetArrayFromImage (a copy): a view of the temporary component image would dangle.
    return int(sitk.GetArrayFromImage(sitk.ConnectedComponent(mask > 0)).max())


def run_segment(
    *,
    subject: str,
    nifti_dir: str | Path,
    out_dir: str | Path,
    segmentation: dict,
    truth: str | Path | None = None,
    user_masks: dict[str, str | Path] | None = None,
) -> dict:
    """Lesion mask of every converted modality: ``out_dir/{modality}.nii.gz`` on its own grid.

    The CT mask is automatic unless the sheet gives one (``user_masks``: modality -> NIfTI,
    RTSTRUCT or SEG file); it is carried onto the other grids, except where the sheet gives that
    modality's own mask. ``segmentation`` is the config slice: method, threshold_hu, lesions
    (all/largest/per_side), extend_with (modalities that delineate the non-calcified part), carry
    (nearest/partial_volume), partial_volume_threshold, params. Writes ``segmentation.json`` with
    per-modality source, lesion count, volume (ml) and, when ``truth`` is given, Dice/HD95.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status: dict = {"subject": subject, "stage": "segment", "modalities": {}, "failures": []}
    images = available_images(nifti_dir)
    user = {m: Path(p) for m, p in (user_masks or {}).items() if m in images}
    try:
        ct_mask, defined_by, n_lesions = None, [], 0
        if "ct" in user:
            ct_mask, defined_by = read_mask_file(user["ct"], images["ct"]), ["user"]
            n_lesions = _lesion_count(ct_mask)
        elif "ct" in images:
            ct_mask, defined_by, n_lesions = _auto_ct_mask(
                subject=subject, images=images, segmentation=segmentation, out_dir=out_dir
            )
        elif not user:
            raise SubjectInputError(
                "no converted CT, so no automatic lesion mask",
                subject=subject,
                stage="segment",
                hint="see results/tables/failures.csv for the conversion error, or give mask_ct",
            )
        muscle = _muscle_reference(subject, images["ct"], ct_mask) if ct_mask else None
        for modality, image in sorted(images.items()):
            if modality in user:
                mask = read_mask_file(user[modality], image)
                entry = {"source": "user", "defined_by": ["user"], "lesions": _lesion_count(mask)}
            elif ct_mask is None:
                continue
            else:
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
                source = "user" if "ct" in user else "auto"
                entry = {"source": source, "defined_by": defined_by, "lesions": n_lesions}
            write_image(mask, out_dir / f"{modality}.nii.gz")
            if muscle is not None and modality in MR_MODALITIES:
                write_image(
                    carry_mask(muscle, image, method="nearest"),
                    out_dir / f"{MUSCLE_PREFIX}{modality}.nii.gz",
                )
            status["modalities"][modality] = {**entry, "volume_ml": _volume_ml(mask)}
        if truth is not None and Path(truth).exists() and ct_mask is not None:
            truth_image = sitk.ReadImage(str(truth))
            status["modalities"]["ct"].update(segmentation_metrics(ct_mask, truth_image))
        status["status"] = STATUS_OK
    except SubjectInputError as error:
        error.subject = error.subject or subject
        error.stage = error.stage or "segment"
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
