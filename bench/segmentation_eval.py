"""Evaluate the automatic lesion segmentation on a phantom cohort against its ground truth.

Runs, per subject, the same sequence as the workflow step (``calcirad.steps.segment``):
``segment_ct`` -> ``select_lesions`` -> ``extend_mask`` with T2/PET when they exist, on the NIfTI
files the workflow sees (dcm2niix output, PET in SUV), then compares the CT mask with
``truth/<subject>/lesion.nii.gz`` and counts the normal bone it includes
(``truth/<subject>/bone.nii.gz``). Truth and dcm2niix NIfTI share a physical grid but not the
storage order (row flip), so truth is carried onto the CT grid in physical space (nearest
neighbour) before any comparison.

Prints one row per subject (Dice, HD95, volumes, bone ml, seconds) and per-label / overall medians;
where a mask holds bone, the progress line and the CSV say where its largest piece of bone lies.

Usage::

    .venv/bin/python bench/segmentation_eval.py --cohort resources/demo --nifti /tmp/segeval/nifti
    .venv/bin/python bench/segmentation_eval.py --subjects S001 S004 --no-extend
    .venv/bin/python bench/segmentation_eval.py --params '{"closing_mm": 4}' --csv out.csv

Missing NIfTI are converted first (``--convert``, on by default) into ``--nifti`` (outside the
repository), one folder per subject holding ``ct/t1/t2/pet.nii.gz``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from calcirad.errors import SubjectInputError
from calcirad.segment import (
    ExtensionParams,
    ThresholdParams,
    carry_mask,
    extend_mask,
    segment_ct,
    segmentation_metrics,
    select_lesions,
)

MODALITIES = ("ct", "t2", "pet")
LABELS = ("tc", "sarcoma", "mimic")


def convert_subject(subject: str, cohort: Path, out_dir: Path) -> None:
    """dcm2niix conversion of the CT, T2 and PET of ``subject`` into ``out_dir`` (as the workflow)."""
    from calcirad.convert import convert_series
    from calcirad.dicom import DEFAULT_CLASSIFICATION, build_inventory

    out_dir.mkdir(parents=True, exist_ok=True)
    inventory = build_inventory(
        subject=subject, study_dir=cohort / "dicom" / subject, rules=DEFAULT_CLASSIFICATION
    )
    with tempfile.TemporaryDirectory(prefix=f"segeval_{subject}_") as work:
        for modality, series in inventory.chosen.items():
            if modality not in MODALITIES or (out_dir / f"{modality}.nii.gz").exists():
                continue
            convert_series(
                subject=subject,
                modality=modality,
                files=[Path(f) for f in series.files],
                out_nifti=out_dir / f"{modality}.nii.gz",
                out_sidecar=out_dir / f"{modality}.json",
                work_dir=Path(work),
                suv={"suv": "bw"} if modality == "pet" else None,
            )


def read_labels(cohort: Path) -> dict[str, str]:
    """subject -> label (tc / sarcoma / mimic) from ``truth/labels.tsv``."""
    with open(cohort / "truth" / "labels.tsv", newline="") as handle:
        return {row["subject"]: row["label"] for row in csv.DictReader(handle, delimiter="\t")}


def evaluate_subject(
    subject: str,
    *,
    cohort: Path,
    nifti: Path,
    params: dict,
    extend: bool,
    policy: str = "all",
    extension: ExtensionParams | None = None,
) -> dict:
    """Segment one subject as the workflow does; Dice, HD95, volumes, bone ml and seconds."""
    images = {
        m: sitk.ReadImage(str(nifti / subject / f"{m}.nii.gz"))
        for m in MODALITIES
        if (nifti / subject / f"{m}.nii.gz").exists()
    }
    ct = images["ct"]
    start = time.perf_counter()
    try:
        labels = segment_ct(ct, method="threshold_components", params=params)
        mask = select_lesions(labels, policy=policy)
        guides = {m: images[m] for m in ("t2", "pet") if m in images}
        if extend and guides:
            mask = extend_mask(
                ct,
                mask,
                images=guides,
                params=extension,
                bone_params=ThresholdParams.from_mapping(params),
            ).mask
        error = ""
    except SubjectInputError as exc:
        mask, error = sitk.Image(ct.GetSize(), sitk.sitkUInt8), str(exc)
        mask.CopyInformation(ct)
    seconds = time.perf_counter() - start
    truth = sitk.ReadImage(str(cohort / "truth" / subject / "lesion.nii.gz"))
    bone = carry_mask(
        sitk.ReadImage(str(cohort / "truth" / subject / "bone.nii.gz")), ct, method="nearest"
    )
    metrics = segmentation_metrics(mask, truth)
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    inside = sitk.GetArrayViewFromImage(mask) > 0
    leak = inside & (sitk.GetArrayViewFromImage(bone) > 0)
    return {
        "subject": subject,
        **metrics,
        "bone_ml": float(leak.sum()) * voxel_ml,
        "largest_bone_piece": largest_bone_piece(leak, ct),
        "seconds": seconds,
        "error": error,
    }


def largest_bone_piece(leak: np.ndarray, ct: sitk.Image) -> str:
    """Where the largest connected piece of bone inside a mask lies, for diagnosis: its volume
    (ml), bounding-box edges (mm, x y z) and centre (LPS mm), e.g. a fragment a mass cut off."""
    labels, count = ndimage.label(leak, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return ""
    sizes = np.bincount(labels.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    box = ndimage.find_objects(labels)[largest - 1]
    spacing = ct.GetSpacing()  # x, y, z; numpy boxes are z, y, x
    edges = [(s.stop - s.start) * d for s, d in zip(reversed(box), spacing, strict=True)]
    centre = ndimage.center_of_mass(leak, labels, largest)[::-1]
    lps = ct.TransformContinuousIndexToPhysicalPoint([float(c) for c in centre])
    volume = sizes[largest - 1] * float(np.prod(spacing)) / 1000.0
    return (
        f"{volume:.2f} ml, {' x '.join(f'{e:.0f}' for e in edges)} mm at LPS "
        f"({', '.join(f'{c:.0f}' for c in lps)})"
    )


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def summarise(rows: list[dict]) -> list[dict]:
    """Per-label and overall medians (Dice, HD95), max bone ml and median seconds."""
    groups = {label: [r for r in rows if r["label"] == label] for label in LABELS}
    groups["all"] = rows
    out = []
    for name, group in groups.items():
        if not group:
            continue
        out.append(
            {
                "group": name,
                "n": len(group),
                "median_dice": _median([r["dice"] for r in group]),
                "min_dice": min(r["dice"] for r in group),
                "median_hd95_mm": _median([r["hd95_mm"] for r in group]),
                "max_bone_ml": max(r["bone_ml"] for r in group),
                "median_seconds": _median([r["seconds"] for r in group]),
                "max_seconds": max(r["seconds"] for r in group),
            }
        )
    return out


def _table(rows: list[dict], columns: list[str]) -> str:
    def fmt(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cohort", type=Path, default=Path("resources/demo"))
    parser.add_argument("--nifti", type=Path, default=Path("/tmp/segeval/nifti"))
    parser.add_argument("--subjects", nargs="*", help="default: every subject of labels.tsv")
    parser.add_argument("--params", default="{}", help="JSON segment_ct params over the defaults")
    parser.add_argument("--extend-params", default="{}", help="JSON ExtensionParams fields")
    parser.add_argument("--threshold-hu", type=float, default=150.0, help="as in config.yaml")
    parser.add_argument("--policy", default="all", help="lesion selection policy")
    parser.add_argument("--no-extend", action="store_true", help="CT only (no T2/PET extension)")
    parser.add_argument("--no-convert", action="store_true", help="fail on missing NIfTI")
    parser.add_argument("--csv", type=Path, help="also write the per-subject rows here")
    args = parser.parse_args(argv)

    labels = read_labels(args.cohort)
    subjects = args.subjects or sorted(labels)
    params = {"threshold_hu": args.threshold_hu, **json.loads(args.params)}
    rows = []
    for subject in subjects:
        if not (args.nifti / subject / "ct.nii.gz").exists():
            if args.no_convert:
                raise SystemExit(f"{subject}: no converted CT under {args.nifti}")
            convert_subject(subject, args.cohort, args.nifti / subject)
        row = evaluate_subject(
            subject,
            cohort=args.cohort,
            nifti=args.nifti,
            params=params,
            extend=not args.no_extend,
            policy=args.policy,
            extension=ExtensionParams(**json.loads(args.extend_params)),
        )
        row["label"] = labels[subject]
        rows.append(row)
        print(
            f"{subject} {row['label']:8s} dice={row['dice']:.3f} hd95={row['hd95_mm']:.1f} "
            f"bone={row['bone_ml']:.2f}ml {row['seconds']:.1f}s {row['error']}"
            + (f" largest bone piece: {row['largest_bone_piece']}" if row["bone_ml"] > 0.1 else ""),
            file=sys.stderr,
            flush=True,
        )
    columns = ["subject", "label", "dice", "hd95_mm", "volume_ml", "truth_volume_ml"]
    print(_table(rows, [*columns, "bone_ml", "seconds"]))
    print()
    print(_table(summarise(rows), list(summarise(rows)[0])))
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
