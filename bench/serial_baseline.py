"""Baseline: the plain serial script a researcher would write instead of calcirad.

For each subject, one after another: read each chosen DICOM series with SimpleITK's
``ImageSeriesReader`` (GDCM), scale PET to SUV (body weight) from its own headers with pydicom,
write ``<modality>.nii.gz``; then extract pyradiomics features with the same parameter file per
modality as calcirad, on the same lesion masks (calcirad's, resampled onto the SimpleITK grid by
nearest neighbour: same physical grid, different storage order). No verification, no provenance,
no failure records: this is the lower bound of what such a script does.

Which series to read is taken from calcirad's ingest records (``results/ingest/<subject>.json``):
series selection is not what this baseline measures. Prints one JSON object with the seconds
spent in conversion and in extraction and the number of images and masks processed.

Usage::

    .venv/bin/python bench/serial_baseline.py --sheet COHORT/samples.tsv --run RUN_DIR \\
        --params ct=RUN_DIR/config/radiomics/ct.yaml t1=... t2=... pet=... --out /tmp/serial
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import math
import time
from pathlib import Path

import pydicom
import SimpleITK as sitk

MODALITIES = ("ct", "t1", "t2", "pet")


def _datetime(date: str, clock: str) -> dt.datetime:
    clock = clock.split(".")[0].ljust(6, "0")
    return dt.datetime.strptime(date + clock, "%Y%m%d%H%M%S")


def suv_factor(first_file: str) -> float:
    """SUVbw factor (g/ml per Bq/ml): weight / decay-corrected dose, decay to the series time."""
    ds = pydicom.dcmread(first_file, stop_before_pixels=True)
    info = ds.RadiopharmaceuticalInformationSequence[0]
    if getattr(info, "RadiopharmaceuticalStartDateTime", None):
        injected = dt.datetime.strptime(
            str(info.RadiopharmaceuticalStartDateTime).split(".")[0][:14], "%Y%m%d%H%M%S"
        )
    else:
        injected = _datetime(ds.SeriesDate, str(info.RadiopharmaceuticalStartTime))
    reference = _datetime(ds.SeriesDate, ds.SeriesTime)
    decay = (reference - injected).total_seconds()
    dose = float(info.RadionuclideTotalDose) * math.pow(
        2.0, -decay / float(info.RadionuclideHalfLife)
    )
    return float(ds.PatientWeight) * 1000.0 / dose


def convert(study: Path, chosen: dict, modality: str, out: Path) -> sitk.Image:
    folder = study / chosen["folder"]
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder), chosen["series_uid"])
    reader.SetFileNames(files)
    image = reader.Execute()
    image = sitk.Cast(image, sitk.sitkFloat32)
    if modality == "pet":
        image = image * suv_factor(files[0])
    sitk.WriteImage(image, str(out / f"{modality}.nii.gz"), useCompression=True)
    return image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheet", type=Path, required=True)
    parser.add_argument("--run", type=Path, required=True, help="a calcirad run directory")
    parser.add_argument("--params", nargs="+", required=True, help="modality=file ...")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    params = dict(item.split("=", 1) for item in args.params)

    from radiomics import featureextractor

    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractors = {m: featureextractor.RadiomicsFeatureExtractor(params[m]) for m in MODALITIES}
    with args.sheet.open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if not r["subject"][0] == "#"]
    seconds = {"conversion": 0.0, "extraction": 0.0}
    counts = {"images": 0, "masks": 0, "failed": 0}
    for row in rows:
        subject = row["subject"]
        study = (args.sheet.parent / row["dicom"]).resolve()
        inventory = json.loads((args.run / "results/ingest" / f"{subject}.json").read_text())
        out = args.out / subject
        out.mkdir(parents=True, exist_ok=True)
        images = {}
        start = time.perf_counter()
        for modality in MODALITIES:
            chosen = inventory["chosen"].get(modality)
            if chosen:
                images[modality] = convert(study, chosen, modality, out)
                counts["images"] += 1
        seconds["conversion"] += time.perf_counter() - start
        start = time.perf_counter()
        for modality, image in images.items():
            mask_file = args.run / "results/masks" / subject / f"{modality}.nii.gz"
            if not mask_file.exists():
                continue
            mask = sitk.Resample(
                sitk.ReadImage(str(mask_file), sitk.sitkUInt8),
                image,
                sitk.Transform(),
                sitk.sitkNearestNeighbor,
                0,
                sitk.sitkUInt8,
            )
            try:
                extractors[modality].execute(image, mask, label=1)
                counts["masks"] += 1
            except (ValueError, AssertionError):
                counts["failed"] += 1
        seconds["extraction"] += time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "counts": counts, "subjects": len(rows)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
