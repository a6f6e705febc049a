"""Image formation: one path (blur -> bias -> noise -> integer encoding) parameterised by modality.

Inputs are the ideal property maps of ``render`` (HU, MR relative signal, SUV); outputs are the
stored integer pixels plus per-slice RescaleSlope and a RescaleIntercept, so that
``stored * slope + intercept`` is HU (CT), scanner units (MR) or Bq/ml (PET).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from calcirad.phantom.geometry import Grid, slice_axis
from calcirad.phantom.priors import Priors, draw

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
CT_INTERCEPT = -1024.0  # stored = HU + 1024 in signed int16 (PixelRepresentation 1)
PET_MAX_STORED = 32767


@dataclass(frozen=True)
class Acquisition:
    """One series to simulate: its modality, property key, grid and physics parameters.

    ``plane`` is the slice plane the series is stored in (``axial`` or ``coronal``); the grid and
    every array stay (z, y, x) in LPS, the writer reorders them (geometry.to_slices).
    ``noise`` is ``gaussian`` (std ``noise_level`` HU, correlated by the PSF), ``rician``
    (std = ``scale`` / ``noise_level``, i.e. noise_level is the muscle SNR) or ``poisson``
    (``noise_level`` counts per voxel per SUV unit). ``scale`` converts the property to stored units
    (MR: muscle signal; PET: Bq/ml per SUV).
    """

    name: str  # series folder stem: CT, MR_T1, MR_T2, PET, MR_T1C
    modality: str  # DICOM Modality: CT, MR, PT
    key: str  # render property: ct, t1, t2, suv, t1c
    series_number: int
    grid: Grid
    psf_fwhm_mm: float
    noise: str
    noise_level: float
    scale: float = 1.0
    bias_amplitude: float = 0.0
    tags: dict[str, Any] = field(default_factory=dict)
    plane: str = "axial"


def make_grid(spec: dict[str, Any], rng: np.random.Generator, centre: tuple) -> Grid:
    """Grid of one modality for the chosen size, spacings drawn from ``spec`` (mm)."""
    return Grid.centred(
        centre=centre,
        matrix=int(spec["matrix"]),
        pixel_mm=round(draw(spec["pixel_mm"], rng), 3),
        slices=int(spec["slices"]),
        slice_mm=round(draw(spec["slice_mm"], rng), 2),
    )


def _blur(image: np.ndarray, acq: Acquisition) -> np.ndarray:
    sx, sy, sz = acq.grid.spacing
    steps = (sz, sy, sx)  # mm per step along the (z, y, x) array axes
    through = slice_axis(acq.plane)
    fwhm = [acq.psf_fwhm_mm] * 3
    if acq.modality != "PT":  # through-plane: a thick slice integrates ~0.8 of its thickness
        fwhm[through] = max(acq.psf_fwhm_mm, 0.8 * steps[through])
    sigma = tuple(f * FWHM_TO_SIGMA / s for f, s in zip(fwhm, steps, strict=True))
    return ndimage.gaussian_filter(image, sigma, mode="nearest")


def _bias_field(grid: Grid, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative receive-coil field: 1 +- ``amplitude`` from a random quadratic."""
    z, y, x = (np.linspace(-1, 1, n) for n in grid.shape)
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    c = rng.normal(size=6)
    field_ = c[0] * xx + c[1] * yy + c[2] * zz + c[3] * xx * yy + c[4] * xx**2 + c[5] * yy**2
    field_ = field_ / (np.abs(field_).max() + 1e-9)
    return (1.0 + amplitude * field_).astype(np.float32)


def ideal_image(values: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Noise-free image in physical units (HU, MR units before bias, SUV): the blurred map."""
    return _blur(values.astype(np.float32), acq)


def form_image(values: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Blurred, biased and noisy image in physical units (HU / MR signal / SUV), float32."""
    image = ideal_image(values, acq) * np.float32(acq.scale if acq.noise == "rician" else 1.0)
    if acq.bias_amplitude:
        image *= _bias_field(acq.grid, acq.bias_amplitude, rng)
    if acq.noise == "gaussian":
        white = rng.standard_normal(image.shape).astype(np.float32)
        coloured = _blur(white, acq)  # CT noise is correlated by the reconstruction kernel
        image += coloured * np.float32(acq.noise_level / coloured.std())
    elif acq.noise == "rician":
        sigma = acq.scale / acq.noise_level
        real = image + rng.normal(0.0, sigma, image.shape)
        imag = rng.normal(0.0, sigma, image.shape)
        image = np.sqrt(real**2 + imag**2).astype(np.float32)
    elif acq.noise == "poisson":
        counts = rng.poisson(np.clip(image, 0, None) * acq.noise_level)
        image = (counts / acq.noise_level).astype(np.float32)
    else:
        raise ValueError(f"unknown noise model {acq.noise!r}")
    return image


def encode(image: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, list[float], float]:
    """Stored pixels, per-slice RescaleSlope, RescaleIntercept for one series.

    CT: int16, slope 1, intercept -1024. MR: uint16, slope 1. PET: Bq/ml scaled into int16
    with its own slope per slice, as PET scanners do.
    """
    nz = image.shape[0]
    if acq.modality == "CT":
        stored = np.clip(np.rint(image - CT_INTERCEPT), 0, 4095).astype(np.int16)
        return stored, [1.0] * nz, CT_INTERCEPT
    if acq.modality == "MR":
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16), [1.0] * nz, 0.0
    if acq.modality == "PT":
        bqml = image.astype(np.float64) * acq.scale
        peaks = bqml.reshape(nz, -1).max(axis=1)
        slopes = [float(f"{p / PET_MAX_STORED:.6g}") if p > 0 else 1.0 for p in peaks]
        stored = np.stack(
            [np.clip(np.rint(bqml[k] / slopes[k]), 0, PET_MAX_STORED) for k in range(nz)]
        ).astype(np.int16)
        return stored, slopes, 0.0
    raise ValueError(f"unknown modality {acq.modality!r}")


def coronal_grid(spec: dict[str, Any], axial: Grid, centre: tuple) -> Grid:
    """The coronal grid of a site that acquires one MR weighting coronally: matrix, rows (z) and
    slice count (y) from ``spec``, pixel size and slice thickness those of the site's axial MR
    ``axial`` (same protocol resolution; no new random draw)."""
    return Grid.coronal(
        centre=centre,
        matrix=int(spec["matrix"]),
        rows=int(spec["rows"]),
        pixel_mm=axial.spacing[0],
        slices=int(spec["slices"]),
        slice_mm=axial.spacing[2],
    )


def grid_spec(priors: Priors, size: str, site: str, modality: str) -> dict[str, Any]:
    """The grid of one modality for ``size``, with the site's own resolution where it has one."""
    override = priors["sites"][site].get("sizes", {}).get(size, {}).get(modality, {})
    return {**priors["sizes"][size][modality], **override}


def acquisitions(
    *,
    priors: Priors,
    size: str,
    site: str,
    rng: np.random.Generator,
    centre: tuple[float, float, float],
    bqml_per_suv: float,
    t1c: bool = False,
) -> list[Acquisition]:
    """The series of one subject (CT, MR T1, MR T2, PET, and the post-contrast T1 when ``t1c``)
    for ``site`` and ``size``."""
    st = priors["sites"][site]
    ct_grid = make_grid(grid_spec(priors, size, site, "ct"), rng, centre)
    mr_grid = make_grid(grid_spec(priors, size, site, "mr"), rng, centre)  # T1, T2, T1c share it
    pet_grid = make_grid(grid_spec(priors, size, site, "pet"), rng, centre)
    muscle = draw(priors["sequences"]["mr_muscle_signal"], rng)
    snr, bias = draw(st["mr"]["snr"], rng), draw(st["mr"]["bias_amplitude"], rng)
    out = [
        Acquisition(
            name="CT",
            modality="CT",
            key="ct",
            series_number=2,
            grid=ct_grid,
            psf_fwhm_mm=draw(st["ct"]["psf_fwhm_mm"], rng),
            noise="gaussian",
            noise_level=draw(st["ct"]["noise_hu"], rng),
        )
    ]
    for number, weighting in ((3, "t1"), (4, "t2")):
        seq = priors["sequences"][weighting]
        plane = st["mr"].get(f"{weighting}_plane", "axial")
        grid = mr_grid
        if plane == "coronal":
            spec = grid_spec(priors, size, site, "mr_coronal")
            grid = coronal_grid(spec, mr_grid, centre)
        elif plane != "axial":
            raise ValueError(f"site {site}: unknown {weighting}_plane {plane!r}")
        out.append(
            Acquisition(
                name=f"MR_{weighting.upper()}",
                modality="MR",
                key=weighting,
                series_number=number,
                grid=grid,
                psf_fwhm_mm=mr_grid.spacing[0],
                noise="rician",
                noise_level=snr,
                scale=muscle,
                bias_amplitude=bias,
                tags={
                    "tr_ms": round(draw(seq["tr_ms"], rng)),
                    "te_ms": round(draw(seq["te_ms"], rng), 1),
                    "etl": seq["etl"],
                    "sequence_name": seq["sequence_name"],
                    "description": st["mr"][f"{weighting}_desc"],
                },
                plane=plane,
            )
        )
    out.append(
        Acquisition(
            name="PET",
            modality="PT",
            key="suv",
            series_number=5,
            grid=pet_grid,
            psf_fwhm_mm=draw(st["pet"]["psf_fwhm_mm"], rng),
            noise="poisson",
            noise_level=draw(st["pet"]["counts_per_suv"], rng),
            scale=bqml_per_suv,
        )
    )
    if t1c:
        t1 = out[1]  # the T1 it repeats after gadolinium
        out.append(
            Acquisition(
                name="MR_T1C",
                modality="MR",
                key="t1c",
                series_number=6,
                grid=t1.grid,
                plane=t1.plane,
                psf_fwhm_mm=t1.psf_fwhm_mm,
                noise="rician",
                noise_level=snr,
                scale=muscle,
                bias_amplitude=bias,
                tags={
                    **t1.tags,
                    "description": st["mr"]["t1c_desc"],
                    "contrast": priors["contrast"],
                },
            )
        )
    return out


def localizer(ct: Acquisition, hu: np.ndarray) -> tuple[Acquisition, np.ndarray]:
    """A CT localizer (AP topogram) of the CT's field of view and its stored pixels.

    The image is the line integral along y of the attenuation relative to air, in mm of water
    equivalent x 8 (uint16 stored, slope 1), stored as one coronal slice through the CT centre:
    ``(nz, 1, nx)`` on a grid of one slice. ``hu`` is the CT property map (z, y, x) in HU.
    """
    sx, sy, sz = ct.grid.spacing
    nz, ny, nx = ct.grid.shape
    water_mm = np.clip(hu.astype(np.float64) + 1000.0, 0.0, None).sum(axis=1) / 1000.0 * sy
    stored = np.clip(np.rint(water_mm * 8.0), 0, 65535).astype(np.uint16)[:, None, :]
    centre_y = ct.grid.origin[1] + (ny - 1) / 2 * sy
    grid = Grid(shape=(nz, 1, nx), origin=(ct.grid.origin[0], round(centre_y, 4),
                ct.grid.origin[2]), spacing=(sx, 1.0, sz))  # fmt: skip
    acq = Acquisition(
        name="SCOUT",
        modality="CT",
        key="ct",
        series_number=1,
        grid=grid,
        psf_fwhm_mm=ct.psf_fwhm_mm,
        noise="none",
        noise_level=0.0,
        tags={"localizer": True},
        plane="coronal",
    )
    return acq, stored
