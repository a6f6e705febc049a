"""Voxel grids and the analytic shapes painted onto them.

Conventions: LPS patient coordinates in mm (x to the patient's left, y posterior, z superior).
Arrays are indexed ``[k, j, i]`` = ``[z, y, x]``, i.e. one axial DICOM slice per ``k`` with rows
along +y and columns along +x (ImageOrientationPatient [1,0,0,0,1,0]).
Shapes are evaluated only inside their bounding box, so painting stays cheap on large grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Vec = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: ``shape`` (nz, ny, nx), ``origin`` LPS mm of voxel [0,0,0]
    centre, ``spacing`` (sx, sy, sz) mm."""

    shape: tuple[int, int, int]
    origin: Vec
    spacing: Vec

    @classmethod
    def centred(cls, *, centre: Vec, matrix: int, pixel_mm: float, slices: int, slice_mm: float):
        """A square in-plane grid centred on ``centre`` (LPS mm)."""
        spacing = (pixel_mm, pixel_mm, slice_mm)
        counts = (matrix, matrix, slices)
        origin = tuple(
            round(c - (n - 1) / 2 * s, 4) for c, n, s in zip(centre, counts, spacing, strict=True)
        )
        return cls(shape=(slices, matrix, matrix), origin=origin, spacing=spacing)

    @classmethod
    def coronal(
        cls, *, centre: Vec, matrix: int, rows: int, pixel_mm: float, slices: int, slice_mm: float
    ):
        """A grid for coronal slices centred on ``centre``: ``matrix`` columns along x and ``rows``
        along z at ``pixel_mm``, ``slices`` along y at ``slice_mm`` (still stored (z, y, x))."""
        spacing = (pixel_mm, slice_mm, pixel_mm)
        counts = (matrix, slices, rows)
        origin = tuple(
            round(c - (n - 1) / 2 * s, 4) for c, n, s in zip(centre, counts, spacing, strict=True)
        )
        return cls(shape=(rows, slices, matrix), origin=origin, spacing=spacing)

    def axis(self, dim: int) -> np.ndarray:
        """World coordinates (mm) of voxel centres along LPS axis ``dim`` (0=x, 1=y, 2=z)."""
        n = self.shape[2 - dim]
        return self.origin[dim] + self.spacing[dim] * np.arange(n)

    def block(self, low: Vec, high: Vec) -> tuple[tuple[slice, slice, slice], list[np.ndarray]]:
        """Index slices ``[z, y, x]`` covering the world box, and broadcastable x, y, z coords."""
        slices, coords = [], []
        for dim in range(3):
            n = self.shape[2 - dim]
            a = int(np.floor((low[dim] - self.origin[dim]) / self.spacing[dim]))
            b = int(np.ceil((high[dim] - self.origin[dim]) / self.spacing[dim])) + 1
            a, b = max(a, 0), min(b, n)
            slices.append(slice(a, max(a, b)))
            coords.append(self.origin[dim] + self.spacing[dim] * np.arange(a, max(a, b)))
        x = coords[0][None, None, :]
        y = coords[1][None, :, None]
        z = coords[2][:, None, None]
        return (slices[2], slices[1], slices[0]), [x, y, z]


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid; ``inner`` (0-1) hollows it into a shell; ``cut`` keeps the part where
    ``dot(p - centre, normal) >= offset`` (e.g. normal (0,1,0): the posterior, dependent part)."""

    centre: Vec
    radii: Vec
    inner: float = 0.0
    cut: tuple[Vec, float] | None = None

    def bbox(self) -> tuple[Vec, Vec]:
        low = tuple(c - r for c, r in zip(self.centre, self.radii, strict=True))
        high = tuple(c + r for c, r in zip(self.centre, self.radii, strict=True))
        return low, high

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        d = [x - self.centre[0], y - self.centre[1], z - self.centre[2]]
        q = sum((di / r) ** 2 for di, r in zip(d, self.radii, strict=True))
        mask = q <= 1.0
        if self.inner > 0:
            mask &= q >= self.inner**2
        if self.cut is not None:
            normal, offset = self.cut
            mask &= d[0] * normal[0] + d[1] * normal[1] + d[2] * normal[2] >= offset
        return mask


@dataclass(frozen=True)
class Capsule:
    """Rod of ``radius`` (mm) around the segment ``p0``-``p1``; ``inner`` radius hollows it (cortex)."""

    p0: Vec
    p1: Vec
    radius: float
    inner: float = 0.0

    def bbox(self) -> tuple[Vec, Vec]:
        low = tuple(min(a, b) - self.radius for a, b in zip(self.p0, self.p1, strict=True))
        high = tuple(max(a, b) + self.radius for a, b in zip(self.p0, self.p1, strict=True))
        return low, high

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        p0 = np.asarray(self.p0)
        axis = np.asarray(self.p1) - p0
        t = ((x - p0[0]) * axis[0] + (y - p0[1]) * axis[1] + (z - p0[2]) * axis[2]) / axis.dot(axis)
        t = np.clip(t, 0.0, 1.0)
        d2 = (x - p0[0] - t * axis[0]) ** 2 + (y - p0[1] - t * axis[1]) ** 2
        d2 = d2 + (z - p0[2] - t * axis[2]) ** 2
        mask = d2 <= self.radius**2
        if self.inner > 0:
            mask &= d2 >= self.inner**2
        return mask


@dataclass(frozen=True)
class EllipticCylinder:
    """Ellipse (x, y semi-axes ``radii``) extruded between ``z_range`` (mm); the body outline."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    z_range: tuple[float, float]

    def bbox(self) -> tuple[Vec, Vec]:
        (cx, cy), (rx, ry) = self.centre, self.radii
        return (cx - rx, cy - ry, self.z_range[0]), (cx + rx, cy + ry, self.z_range[1])

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        (cx, cy), (rx, ry) = self.centre, self.radii
        inplane = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        return inplane & (z >= self.z_range[0]) & (z <= self.z_range[1])


Shape = Ellipsoid | Capsule | EllipticCylinder


def paint(volume: np.ndarray, grid: Grid, shape: Shape, value: float | int) -> None:
    """Set ``volume`` to ``value`` inside ``shape`` (in place)."""
    low, high = shape.bbox()
    index, (x, y, z) = grid.block(low, high)
    if any(s.stop <= s.start for s in index):
        return
    mask = shape.inside(x, y, z)
    volume[index][mask] = value


def shape_volume_ml(shape: Shape) -> float:
    """Rough analytic volume (ml) of a full ellipsoid; used only to size lesions."""
    if isinstance(shape, Ellipsoid):
        return 4.0 / 3.0 * np.pi * float(np.prod(shape.radii)) / 1000.0
    raise TypeError(type(shape).__name__)


# ------------------------------------------------------------------ slices as DICOM stores them
# plane -> (array axis of the slice stack in (z, y, x), ImageOrientationPatient (row, column))
PLANES = {
    "axial": (0, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),  # rows along +x, columns down +y (posterior)
    "coronal": (1, (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)),  # rows along +x, columns down -z (feet)
}


def slice_axis(plane: str) -> int:
    """Array axis (0=z, 1=y) along which ``plane`` slices are stacked."""
    return PLANES[plane][0]


def to_slices(volume: np.ndarray, plane: str) -> np.ndarray:
    """A (z, y, x) array as the (slice, row, column) stack of ``plane``, slices in increasing
    position along the normal (row direction x column direction): axial +z, coronal +y with
    the head at the top row."""
    if plane == "axial":
        return volume
    if plane == "coronal":
        return np.ascontiguousarray(volume[::-1].transpose(1, 0, 2))
    raise ValueError(f"unknown plane {plane!r}")


def slice_geometry(grid: Grid, plane: str) -> dict:
    """DICOM geometry of ``to_slices(volume, plane)`` on ``grid``: ImageOrientationPatient,
    ImagePositionPatient of each slice (LPS mm, first transmitted pixel), PixelSpacing
    (row spacing, column spacing), slice spacing (mm), Rows and Columns."""
    x0, y0, z0 = grid.origin
    sx, sy, sz = grid.spacing
    nz, ny, nx = grid.shape
    if plane == "axial":
        positions = [(x0, y0, z0 + k * sz) for k in range(nz)]
        return {"orientation": PLANES[plane][1], "positions": positions,
                "pixel_spacing": (sy, sx), "slice_mm": sz, "rows": ny, "columns": nx}  # fmt: skip
    if plane == "coronal":
        top = z0 + (nz - 1) * sz
        positions = [(x0, y0 + k * sy, top) for k in range(ny)]
        return {"orientation": PLANES[plane][1], "positions": positions,
                "pixel_spacing": (sz, sx), "slice_mm": sy, "rows": nz, "columns": nx}  # fmt: skip
    raise ValueError(f"unknown plane {plane!r}")
