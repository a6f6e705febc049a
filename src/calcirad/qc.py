"""Quality-control figure: one axial slice per modality with the lesion outline.

Radiological convention: the patient's right is on the image's left and anterior at the top. Images
are reoriented to LPS axes first (index i -> patient left, j -> posterior), so columns run from
patient right to left and rows from anterior to posterior. The PNG is byte-for-byte reproducible
(Agg renderer, matplotlib defaults, no metadata) and carries no patient identifier in its metadata;
the caller's ``title`` is drawn in the picture, so pass a pseudonymous subject id.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib
import numpy as np
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from calcirad.atomic import atomic_path
from calcirad.errors import SubjectInputError
from calcirad.segment.carry import carry_mask, same_grid

PANEL_INCHES = 3.2
DPI = 100
OUTLINE_COLOUR = "#ff2020"

# (label, low, high) display windows. CT: soft tissue (W400/L40) to judge fluid and soft parts,
# bone (W2000/L500) to judge calcification against cortex. PET: SUV 0-6, inverted grey.
CT_WINDOWS = (("soft tissue", -160.0, 240.0), ("bone", -500.0, 1500.0))
PET_WINDOW = ("SUV 0-6", 0.0, 6.0)
MR_PERCENTILES = (1.0, 99.0)


@dataclasses.dataclass(frozen=True)
class AxialView:
    """A 2D axial slice ready to draw: row 0 anterior, column 0 patient right."""

    image: np.ndarray
    mask: np.ndarray
    aspect: float  # row spacing / column spacing, for imshow
    z_mm: float  # LPS z of the slice
    area_mm2: float  # lesion area on this slice


def axial_view(image: sitk.Image, mask: sitk.Image, *, margin_mm: float | None = None) -> AxialView:
    """The axial slice of ``image`` where ``mask`` (same grid) covers the largest area.

    Ties go to the most inferior slice so the choice is deterministic. With ``margin_mm`` the view
    is cropped to the lesion's bounding box on that slice plus this margin (mm), so the outline
    can be judged; None keeps the whole slice.
    """
    image_lps = sitk.DICOMOrient(image, "LPS")
    mask_lps = sitk.DICOMOrient(mask, "LPS")
    pixels = sitk.GetArrayFromImage(image_lps).astype(np.float32)
    inside = sitk.GetArrayFromImage(mask_lps) > 0
    areas = inside.sum(axis=(1, 2))
    # No lesion (segmentation failed): show the central slice, so the QC still shows the anatomy.
    k = int(np.argmax(areas)) if areas.any() else inside.shape[0] // 2
    sx, sy, _ = image_lps.GetSpacing()
    z_mm = image_lps.TransformIndexToPhysicalPoint((0, 0, k))[2]
    crop = _crop(inside[k], (sy, sx), margin_mm)
    return AxialView(
        image=pixels[k][crop],
        mask=inside[k][crop],
        aspect=sy / sx,
        z_mm=float(z_mm),
        area_mm2=float(areas[k] * sx * sy),
    )


def _crop(
    mask: np.ndarray, spacing: tuple[float, float], margin_mm: float | None
) -> tuple[slice, slice]:
    """Row/column slices around ``mask`` plus ``margin_mm`` (whole plane if None or empty)."""
    if margin_mm is None or not mask.any():
        return (slice(None), slice(None))
    bounds = []
    for axis, (extent, step) in enumerate(zip(mask.shape, spacing, strict=True)):
        hits = np.nonzero(mask.any(axis=1 - axis))[0]
        pad = int(np.ceil(margin_mm / step))
        bounds.append(slice(max(int(hits[0]) - pad, 0), min(int(hits[-1]) + pad + 1, extent)))
    return tuple(bounds)  # type: ignore[return-value]


def display_windows(modality: str, pixels: np.ndarray) -> list[tuple[str, float, float]]:
    """Display windows (label, low, high) for a modality; MR uses the 1-99th percentiles."""
    if modality == "ct":
        return list(CT_WINDOWS)
    if modality == "pet":
        return [PET_WINDOW]
    low, high = np.percentile(pixels, MR_PERCENTILES)
    return [("p1-p99", float(low), float(max(high, low + 1e-6)))]


def qc_figure(
    *,
    images: dict[str, sitk.Image],
    masks: dict[str, sitk.Image],
    out_png: Path,
    title: str,
    margin_mm: float | None = 60.0,
) -> Path:
    """Write a PNG with, per modality, the axial slice of largest lesion area and its outline.

    ``images`` maps modality (ct, t1, t2, pet, ...) to image; ``masks`` maps modality to the lesion
    mask on that image's grid. A modality without its own mask gets the CT mask (or the first one)
    carried onto its grid by nearest neighbour; with no mask at all (segmentation failed) each
    panel shows the central slice without outline. Each panel shows the lesion with ``margin_mm`` of
    surrounding anatomy (None: the whole slice). Returns ``out_png``.
    """
    if not images:
        raise SubjectInputError("no image to draw", stage="qc", file=str(out_png))
    panels = []
    for modality, image in images.items():
        mask = _mask_for(modality, image, masks) if masks else _empty_mask(image)
        view = axial_view(image, mask, margin_mm=margin_mm)
        panels += [(modality, view, w) for w in display_windows(modality, view.image)]
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # a user's matplotlibrc must not change the bytes
        figure = _draw(panels, title)
        with atomic_path(out_png) as tmp:
            FigureCanvasAgg(figure)
            figure.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
    return Path(out_png)


def _empty_mask(image: sitk.Image) -> sitk.Image:
    mask = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


def _mask_for(modality: str, image: sitk.Image, masks: dict[str, sitk.Image]) -> sitk.Image:
    mask = masks.get(modality, masks.get("ct", next(iter(masks.values()))))
    return mask if same_grid(mask, image) else carry_mask(mask, image, method="nearest")


def _draw(panels: list[tuple[str, AxialView, tuple[str, float, float]]], title: str) -> Figure:
    figure = Figure(figsize=(PANEL_INCHES * len(panels), PANEL_INCHES + 0.5))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (modality, view, (label, low, high)) in zip(axes, panels, strict=True):
        colormap = "gray_r" if modality == "pet" else "gray"
        ax.imshow(
            view.image,
            cmap=colormap,
            vmin=low,
            vmax=high,
            aspect=view.aspect,
            interpolation="nearest",
        )
        if view.mask.any():
            ax.contour(
                view.mask.astype(np.float32), levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.8
            )
        ax.set_title(
            f"{modality.upper()} {label}\nz = {view.z_mm:.1f} mm, {view.area_mm2 / 100:.1f} cm²",
            fontsize=8,
        )
        # Radiological convention marks: patient right on the viewer's left.
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="yellow", fontsize=9, va="center")
        ax.text(
            0.98,
            0.5,
            "L",
            transform=ax.transAxes,
            color="yellow",
            fontsize=9,
            va="center",
            ha="right",
        )
        ax.set_axis_off()
    figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.82, wspace=0.03)
    return figure
