"""Make docs/phantoms.png: one row per phantom subtype, axial CT, T1, T2, T1c and PET through the lesion.

Usage (from the repository root, about half a minute on one core):

    .venv/bin/python docs/make_phantom_figure.py [--out docs/phantoms.png] [--seed 3]

Each row is a one-subject cohort of that subtype written by ``calcirad.phantom.write_cohort`` (demo
size) and read back from its DICOM files, so the figure shows what the pipeline reads. Every panel
is the axial plane through the lesion centre (through a fluid-fluid level when the lesion has one),
resampled to a common 1 mm grid around the lesion, in radiological orientation (patient right on
image left, anterior up). CT: soft-tissue window (L 40 / W 400) and bone window (L 400 / W 1800);
MR: 1st-99.5th percentile of the panel; PET: SUVbw 0-6 (inverted grey); T1c is blank when it
was not acquired (ESKD: no gadolinium).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from PIL import Image  # noqa: E402

from calcirad.phantom import load_priors, write_cohort  # noqa: E402

FOV_MM = 170.0  # side of each square panel
PIXEL_MM = 1.0
COLUMNS = (
    ("CT soft tissue", "CT_"),
    ("CT bone", "CT_"),
    ("T1", "MR_T1_"),
    ("T2", "MR_T2_"),
    ("T1 + Gd", "MR_T1C_"),
    ("FDG PET (SUV 0-6)", "PET_"),
)
MAX_TRIES = 40
# what a row must show to be typical of its entity (the first seed from --seed that does is used)
SHOW_FFL = {"tc_uremic_active", "synovial_sarcoma_calcified"}  # sedimentation sign / its mimic
SMALL_ENTITIES = {"calcific_tendinitis", "calcinosis_ctd", "gout_tophus"}


def _read(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def _suv_factor(folder: Path) -> float:
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    injection = dt.datetime.strptime(drug.RadiopharmaceuticalStartDateTime[:14], "%Y%m%d%H%M%S")
    start = dt.datetime.strptime(ds.SeriesDate + ds.SeriesTime[:6], "%Y%m%d%H%M%S")
    decay = 2 ** (-(start - injection).total_seconds() / float(drug.RadionuclideHalfLife))
    return float(ds.PatientWeight) * 1000.0 / (float(drug.RadionuclideTotalDose) * decay)


def _plane(centre: tuple[float, float, float]) -> sitk.Image:
    """A one-slice 1 mm LPS grid of FOV_MM around ``centre`` (rows +y = anterior at the top)."""
    n = int(FOV_MM / PIXEL_MM)
    ref = sitk.Image(n, n, 1, sitk.sitkFloat32)
    ref.SetSpacing((PIXEL_MM, PIXEL_MM, 1.0))
    ref.SetOrigin((centre[0] - FOV_MM / 2, centre[1] - FOV_MM / 2, centre[2]))
    return ref


def _slice(image: sitk.Image, ref: sitk.Image, default: float) -> np.ndarray:
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, default)
    return sitk.GetArrayFromImage(out)[0]


def _focus(subject_truth: Path) -> tuple[tuple[float, float, float], str]:
    """Centre (LPS mm) of the first lesion, or of its fluid-fluid level, and a short note."""
    lesions = json.loads((subject_truth / "lesions.json").read_text())["lesions"]
    first = lesions[0]
    ffl = [lob for les in lesions for lob in les["lobules"] if lob.get("kind") == "ffl"]
    if ffl:
        big = max(ffl, key=lambda lob: lob["r_mm"])
        return tuple(big["centre_mm"]), "fluid-fluid level"
    return tuple(first["centre_mm"]), ""


def _table(out: Path) -> dict[str, str]:
    header, values = (out / "truth" / "labels.tsv").read_text().split("\n")[:2]
    return dict(zip(header.split("\t"), values.split("\t"), strict=True))


def _typical(name: str, table: dict[str, str], note: str) -> bool:
    """A row worth showing: a lesion of usual size, its hallmark level, and T1c unless ESKD."""
    volume = float(table["lesion_volume_ml"])
    if volume < (0.3 if name in SMALL_ENTITIES else 25.0):
        return False
    if name in SHOW_FFL and not note:
        return False
    return table["eskd"] == "1" or table["t1c"] == "1"


def _subject(root: Path, name: str, seed: int) -> tuple[Path, dict[str, str]]:
    """A one-subject cohort of ``name``: the first typical one from ``seed`` on."""
    for attempt in range(MAX_TRIES):
        out = write_cohort(n=1, seed=seed + attempt, out=root / name, subtypes=[name])
        table = _table(out)
        if _typical(name, table, _focus(out / "truth" / "S001")[1]):
            break
    table["seed"] = str(seed + attempt)
    return out, table


def render_rows(root: Path, subtypes: list[str], seed: int) -> list[dict]:
    rows = []
    for name in subtypes:
        out, table = _subject(root, name, seed)
        study, truth = out / "dicom" / "S001", out / "truth" / "S001"
        centre, note = _focus(truth)
        ref = _plane(centre)
        lesion_ct = sitk.ReadImage(str(truth / "lesion.nii.gz"))
        outline = _slice(sitk.Cast(lesion_ct > 0, sitk.sitkFloat32), ref, 0.0)
        panels = []
        for _title, prefix in COLUMNS:
            folders = sorted(p for p in study.iterdir() if p.name.startswith(prefix))
            if not folders:
                panels.append(None)
                continue
            image = _read(folders[0])
            if prefix == "PET_":
                image = image * _suv_factor(folders[0])
            panels.append(_slice(image, ref, -1000.0 if prefix == "CT_" else 0.0))
        rows.append(
            {"name": name, "table": table, "note": note, "panels": panels, "outline": outline}
        )
    return rows


def _show(ax, panel: np.ndarray | None, column: str, eskd: bool) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if panel is None:
        ax.set_facecolor("black")
        why = "not acquired\n(ESKD: no gadolinium)" if eskd else "not acquired"
        ax.text(0.5, 0.5, why, color="white", ha="center", va="center",
                transform=ax.transAxes, fontsize=6)  # fmt: skip
        return
    if column == "CT soft tissue":
        lo, hi, cmap = -160, 240, "gray"
    elif column == "CT bone":
        lo, hi, cmap = -500, 1300, "gray"
    elif column.startswith("FDG"):
        lo, hi, cmap = 0.0, 6.0, "gray_r"
    else:
        body = panel[panel > 0.05 * panel.max()]
        lo, hi, cmap = 0.0, float(np.percentile(body, 99.5)) if body.size else 1.0, "gray"
    ax.imshow(panel, cmap=cmap, vmin=lo, vmax=hi, interpolation="bilinear")


def draw(rows: list[dict], path: Path) -> None:
    n_rows, n_cols = len(rows), len(COLUMNS)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.45 * n_cols + 1.6, 1.5 * n_rows))
    for r, row in enumerate(rows):
        t = row["table"]
        label = (
            f"{row['name'].replace('_', ' ')}\n[{t['label']}] {t['site']}, "
            f"{t['age']}{t['sex']}{', ESKD' if t['eskd'] == '1' else ''}\n"
            f"SUVmax {t['suvmax_true'] or '-'}, {t['lesion_volume_ml']} ml, seed {t['seed']}"
            + (f"\n{row['note']}" if row["note"] else "")
        )
        for c, (column, _) in enumerate(COLUMNS):
            ax = axes[r, c]
            _show(ax, row["panels"][c], column, row["table"]["eskd"] == "1")
            if c == 0:
                ax.set_ylabel(label, fontsize=6.5, rotation=0, ha="right", va="center")
            if c == 0 and row["outline"].any():
                ax.contour(row["outline"], levels=[0.5], colors="yellow", linewidths=0.4)
            if r == 0:
                ax.set_title(column, fontsize=8)
    fig.text(0.99, 0.002, "axial, radiological orientation: patient right on image left, anterior up; "
             "yellow: truth lesion outline", ha="right", va="bottom", fontsize=6)  # fmt: skip
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.1, rect=(0, 0.012, 1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    # a 256-colour palette keeps the greyscale figure small (the brief asks < 1.5 MB)
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("phantoms.png")))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args(argv)
    subtypes = [name for names in load_priors()["cohort"]["subtypes"].values() for name in names]
    with tempfile.TemporaryDirectory() as tmp:
        rows = render_rows(Path(tmp), subtypes, args.seed)
    draw(rows, Path(args.out))
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({len(rows)} rows, {size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
