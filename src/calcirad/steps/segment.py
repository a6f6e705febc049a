"""Step 2: the CT lesion mask of a subject, carried onto every other modality's grid; QC figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from calcirad.atomic import atomic_path
from calcirad.errors import SubjectInputError
from calcirad.segment import (
    ThresholdParams,
    carry_mask,
    extend_mask,
    muscle_reference_mask,
    overlap_ml,
    read_mask_file,
    register_rigid,
    segment_ct,
    segmentation_metrics,
    select_lesions,
)
from calcirad.steps.common import (
    MUSCLE_PREFIX,
    STATUS_FAILED,
    STATUS_OK,
    failure,
    log,
    read_json,
    write_json,
)

STATUS_FILE = "segmentation.json"
LABELS_FILE = "lesion_labels.nii.gz"
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


def _sidecar_record(nifti_dir: str | Path, modality: str) -> dict:
    """The conversion record (``calcirad`` key of ``{modality}.json``), empty when absent."""
    sidecar = Path(nifti_dir) / f"{modality}.json"
    return read_json(sidecar).get("calcirad", {}) if sidecar.exists() else {}


def foreign_frames(
    *, subject: str, nifti_dir: str | Path, modalities: list[str]
) -> dict[str, SubjectInputError]:
    """Modalities whose FrameOfReferenceUID differs from the CT's, each with the error to record.

    Patient coordinates of two frames of reference are unrelated (an MR of another session, a
    re-positioned patient): carrying the CT mask onto such a series by coordinates would put it
    on the wrong tissue. A modality without a recorded frame (older conversions) is not refused.
    """
    ct_frame = _sidecar_record(nifti_dir, "ct").get("frame_of_reference_uid")
    errors = {}
    for modality in modalities:
        record = _sidecar_record(nifti_dir, modality)
        frame = record.get("frame_of_reference_uid")
        if modality == "ct" or not ct_frame or not frame or frame == ct_frame:
            continue
        errors[modality] = SubjectInputError(
            f"{modality} is in another frame of reference than the CT (FrameOfReferenceUID "
            f"{frame} vs {ct_frame}): the CT lesion mask cannot be carried onto it by patient "
            "coordinates",
            subject=subject,
            stage="segment",
            series=record.get("series"),
            file=str(Path(nifti_dir) / f"{modality}.nii.gz"),
            hint=f"give this series' own mask in the sample sheet (column mask_{modality}), "
            "or register the series to the CT before the run",
        )
    return errors


def transform_file(modality: str) -> str:
    """Name of the rigid transform kept for a series registered to the CT (ITK .tfm text)."""
    return f"{modality}_to_ct.tfm"


def _register_to_ct(
    *, subject: str, modality: str, image: sitk.Image, ct: sitk.Image, out_dir: Path
) -> sitk.Transform:
    """Rigid registration of a series in another frame of reference to the CT (mutual information).

    Returns the transform mapping points of ``image`` to CT points (LPS mm), which carries the CT
    mask onto the series' grid; it is written to ``out_dir/{modality}_to_ct.tfm`` so a reader can
    check or reuse it.
    """
    transform = register_rigid(ct, image)
    with atomic_path(out_dir / transform_file(modality)) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    log.info("%s: %s registered to the CT (%s)", subject, modality, transform_file(modality))
    return transform


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
    *,
    subject: str,
    images: dict[str, sitk.Image],
    segmentation: dict,
    out_dir: Path,
    foreign_frames: dict[str, SubjectInputError] | None = None,
) -> tuple[sitk.Image, list[str], int]:
    """Automatic CT lesion mask: (binary mask, modalities that defined it, lesion count).

    Modalities in ``foreign_frames`` (another frame of reference than the CT) do not guide it.
    """
    params = {"threshold_hu": segmentation["threshold_hu"], **segmentation.get("params", {})}
    labels = segment_ct(images["ct"], method=segmentation["method"], params=params)
    write_image(labels, out_dir / LABELS_FILE)
    ct_mask = select_lesions(labels, policy=segmentation["lesions"])
    n_lesions = int(sitk.GetArrayViewFromImage(labels).max())
    # The non-calcified part of a lesion (a sarcoma's solid component) is close to muscle on
    # unenhanced CT: a radiologist delineates it on T2 and PET, and so do we.
    guides = {
        m: images[m]
        for m in segmentation["extend_with"]
        if m in images and m not in (foreign_frames or {})
    }
    if not guides:
        return ct_mask, ["ct"], n_lesions
    # The extension must avoid the same bone the CT method excluded (and reuse it, memoised).
    bone_params = (
        ThresholdParams.from_mapping(params)
        if segmentation["method"] == "threshold_components"
        else None
    )
    extended = extend_mask(images["ct"], ct_mask, images=guides, bone_params=bone_params)
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
    truth_bone: str | Path | None = None,
    user_masks: dict[str, str | Path] | None = None,
) -> dict:
    """Lesion mask of every converted modality: ``out_dir/{modality}.nii.gz`` on its own grid.

    The CT mask is automatic unless the sheet gives one (``user_masks``: modality -> NIfTI,
    RTSTRUCT or SEG file); it is carried onto the other grids, except where the sheet gives that
    modality's own mask. ``segmentation`` is the config slice: method, threshold_hu, lesions
    (all/largest/per_side), extend_with (modalities that delineate the non-calcified part), carry
    (nearest/partial_volume), partial_volume_threshold, register (rigidly register a series in
    another frame of reference to the CT before carrying; off: refuse it), params. Writes ``segmentation.json`` with
    per-modality source, lesion count, volume (ml) and, when ``truth`` is given, Dice/HD95;
    ``truth_bone`` (the phantom's normal bone) adds the ml of bone inside the CT mask.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    status: dict = {"subject": subject, "stage": "segment", "modalities": {}, "failures": []}
    images = available_images(nifti_dir)
    user = {m: Path(p) for m, p in (user_masks or {}).items() if m in images}
    foreign = foreign_frames(subject=subject, nifti_dir=nifti_dir, modalities=sorted(images))
    try:
        ct_mask, defined_by, n_lesions = None, [], 0
        if "ct" in user:
            ct_mask, defined_by = read_mask_file(user["ct"], images["ct"]), ["user"]
            n_lesions = _lesion_count(ct_mask)
        elif "ct" in images:
            ct_mask, defined_by, n_lesions = _auto_ct_mask(
                subject=subject,
                images=images,
                segmentation=segmentation,
                out_dir=out_dir,
                foreign_frames=foreign,
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
            transform = None
            if modality in user:
                mask = read_mask_file(user[modality], image)
                entry = {"source": "user", "defined_by": ["user"], "lesions": _lesion_count(mask)}
            elif ct_mask is None:
                continue
            elif modality in foreign and not segmentation.get("register", True):
                log.error("%s", foreign[modality])
                status["failures"].append(
                    failure(
                        subject=subject, stage="segment", error=foreign[modality], modality=modality
                    )
                )
                continue
            else:
                if modality in foreign:
                    # Another frame of reference: coordinates are unrelated until registered.
                    transform = _register_to_ct(
                        subject=subject,
                        modality=modality,
                        image=image,
                        ct=images["ct"],
                        out_dir=out_dir,
                    )
                mask = (
                    ct_mask
                    if modality == "ct"
                    else carry_mask(
                        ct_mask,
                        image,
                        method=segmentation["carry"],
                        threshold=segmentation["partial_volume_threshold"],
                        transform=transform,
                    )
                )
                source = "user" if "ct" in user else "auto"
                entry = {"source": source, "defined_by": defined_by, "lesions": n_lesions}
                if transform is not None:
                    entry["registered"] = transform_file(modality)
            write_image(mask, out_dir / f"{modality}.nii.gz")
            # A series in another frame has a muscle reference only once registered.
            registered = modality not in foreign or transform is not None
            if muscle is not None and modality in MR_MODALITIES and registered:
                write_image(
                    carry_mask(muscle, image, method="nearest", transform=transform),
                    out_dir / f"{MUSCLE_PREFIX}{modality}.nii.gz",
                )
            status["modalities"][modality] = {**entry, "volume_ml": _volume_ml(mask)}
        if truth is not None and Path(truth).exists() and ct_mask is not None:
            truth_image = sitk.ReadImage(str(truth))
            status["modalities"]["ct"].update(segmentation_metrics(ct_mask, truth_image))
        if truth_bone is not None and Path(truth_bone).exists() and ct_mask is not None:
            bone = sitk.ReadImage(str(truth_bone))
            status["modalities"]["ct"]["bone_ml"] = overlap_ml(ct_mask, bone)
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
