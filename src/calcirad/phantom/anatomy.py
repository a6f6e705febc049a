"""The phantom body: pelvis, both hips and proximal thighs as analytic shapes, plus lesion anchors.

LPS mm, origin between the femoral heads (z = 0 at the head centres), supine patient.
``side`` is +1 for the patient's left, -1 for the right.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calcirad.phantom.geometry import Capsule, Ellipsoid, EllipticCylinder, Grid, Vec, paint
from calcirad.phantom.priors import Priors, draw

# tissue labels of the background label map
AIR, SKIN, FAT, MUSCLE, TENDON, CORTEX, MARROW, BLADDER = range(8)
TISSUES = {
    AIR: "air",
    SKIN: "skin",
    FAT: "fat",
    MUSCLE: "muscle",
    TENDON: "tendon",
    CORTEX: "cortex",
    MARROW: "marrow",
    BLADDER: "bladder",
}
THIGH_SPLIT_Z = -70.0  # below this the body is two thighs (mm)
SKIN_MM = 2.0
BLADDER_SHAPE = Ellipsoid((0.0, -45.0, 20.0), (45.0, 30.0, 35.0))
BLADDER_MARGIN_MM = 12.0  # about two PET FWHM/2: urinary activity must not spill into a lesion


@dataclass(frozen=True)
class Body:
    """Subject-specific body dimensions (mm)."""

    half_width: float
    half_depth: float
    fat: float
    hip_span: float
    head_r: float
    cortex: float
    shaft_cortex: float

    def head(self, side: int) -> Vec:
        return (side * self.hip_span, -5.0, 0.0)

    def trochanter(self, side: int) -> Vec:
        return (side * (self.hip_span + 35.0), 8.0, -25.0)

    def shaft(self, side: int) -> tuple[Vec, Vec]:
        return (side * (self.hip_span + 25.0), 3.0, -40.0), (
            side * (self.hip_span + 8.0),
            -5.0,
            -300.0,
        )

    def thigh(self, side: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """Centre and semi-axes (x, y) of one thigh's outline."""
        return (side * 0.55 * self.half_width, 0.0), (0.45 * self.half_width, 0.8 * self.half_depth)


def sample_body(priors: Priors, rng: np.random.Generator) -> Body:
    spec = priors["body"]
    return Body(
        half_width=draw(spec["half_width_mm"], rng),
        half_depth=draw(spec["half_depth_mm"], rng),
        fat=draw(spec["fat_mm"], rng),
        hip_span=draw(spec["hip_half_span_mm"], rng),
        head_r=draw(spec["femoral_head_r_mm"], rng),
        cortex=draw(spec["cortex_mm"], rng),
        shaft_cortex=draw(spec["shaft_cortex_mm"], rng),
    )


def _outlines(body: Body, shrink: float) -> list[EllipticCylinder]:
    """Body outline shrunk by ``shrink`` mm: pelvis above the thigh split, two thighs below."""
    pelvis = EllipticCylinder(
        (0.0, 0.0),
        (body.half_width - shrink, body.half_depth - shrink),
        (THIGH_SPLIT_Z, 1000.0),
    )
    thighs = []
    for side in (-1, 1):
        centre, radii = body.thigh(side)
        thighs.append(
            EllipticCylinder(
                centre, (radii[0] - shrink, radii[1] - shrink), (-1000.0, THIGH_SPLIT_Z)
            )
        )
    return [pelvis, *thighs]


def _bones(body: Body) -> tuple[list, list, list, list]:
    """(pelvic outer, pelvic inner, femoral outer, femoral inner) shapes; outer = cortex."""
    c = body.cortex
    p_out, p_in, f_out, f_in = [], [], [], []
    for s in (-1, 1):
        hs, b = body.hip_span, body.half_depth
        for p0, p1, r in (
            ((s * (hs + 5), 10.0, 15.0), (s * (hs + 35), 25.0, 130.0), 16.0),  # ilium
            ((s * (hs + 15), 20.0, 50.0), (s * 45.0, 0.6 * b, 80.0), 12.0),  # to sacroiliac
            ((s * (hs - 20), -25.0, -10.0), (s * 8.0, -0.6 * b, -20.0), 10.0),  # pubic ramus
            ((s * (hs - 10), 20.0, -15.0), (s * (hs - 25), 0.5 * b, -65.0), 13.0),  # ischium
        ):
            p_out.append(Capsule(p0, p1, r))
            p_in.append(Capsule(p0, p1, r - c))
        head = body.head(s)
        roof = (-s * 0.75, 0.0, 0.66)  # acetabulum covers the head medially and from above
        r_acet = body.head_r + 9.0
        p_out.append(Ellipsoid(head, (r_acet,) * 3, (body.head_r + 1.5) / r_acet, (roof, -5.0)))
        p_in.append(
            Ellipsoid(head, (r_acet - c,) * 3, (body.head_r + 1.5 + c) / (r_acet - c), (roof, -5.0))
        )
        troch = body.trochanter(s)
        top, bottom = body.shaft(s)
        f_out += [
            Ellipsoid(head, (body.head_r,) * 3),
            Capsule(head, troch, 0.6 * body.head_r),
            Ellipsoid(troch, (16.0, 20.0, 22.0)),
            Capsule(top, bottom, 14.0),
        ]
        f_in += [
            Ellipsoid(head, (body.head_r - c,) * 3),
            Capsule(head, troch, 0.6 * body.head_r - c),
            Ellipsoid(troch, (16.0 - c, 20.0 - c, 22.0 - c)),
            Capsule(top, bottom, 14.0 - body.shaft_cortex),
        ]
    p_out.append(Ellipsoid((0.0, 0.6 * body.half_depth, 60.0), (45.0, 18.0, 60.0)))  # sacrum
    p_in.append(Ellipsoid((0.0, 0.6 * body.half_depth, 60.0), (45.0 - c, 18.0 - c, 60.0 - c)))
    return p_out, p_in, f_out, f_in


def label_map(body: Body, grid: Grid) -> np.ndarray:
    """Tissue labels (uint8, see ``TISSUES``) of the body sampled at the voxel centres of ``grid``."""
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for shrink, tissue in ((0.0, SKIN), (SKIN_MM, FAT), (body.fat, MUSCLE)):
        for outline in _outlines(body, shrink):
            paint(labels, grid, outline, tissue)
    paint(labels, grid, BLADDER_SHAPE, BLADDER)
    p_out, p_in, f_out, f_in = _bones(body)
    for shapes, tissue in ((p_out, CORTEX), (p_in, MARROW)):
        for shape in shapes:
            paint(labels, grid, shape, tissue)
    for s in (-1, 1):  # cartilage / joint space between head and acetabulum
        paint(labels, grid, Ellipsoid(body.head(s), (body.head_r + 1.5,) * 3), TENDON)
    for shapes, tissue in ((f_out, CORTEX), (f_in, MARROW)):
        for shape in shapes:
            paint(labels, grid, shape, tissue)
    return labels


def bone_mask(labels: np.ndarray) -> np.ndarray:
    return (labels == CORTEX) | (labels == MARROW)


def _unit(v: Vec) -> Vec:
    arr = np.asarray(v, dtype=float)
    return tuple(float(a) for a in arr / np.linalg.norm(arr))


def anchor(body: Body, name: str, side: int, rng: np.random.Generator) -> tuple[Vec, Vec]:
    """A surface point (LPS mm) where an entity lives and the outward direction to grow along.

    Lesions are centred at ``point + direction * (radius + gap)``; a zero direction means the lesion
    is centred on ``point`` (inside a muscle or joint).
    """
    s, a, b = side, body.half_width, body.half_depth
    jitter = rng.normal(0.0, 4.0, 3)
    troch = np.asarray(body.trochanter(s))
    head = np.asarray(body.head(s))
    (tx, ty), (trx, try_) = body.thigh(s)
    thigh_z = -90.0
    table: dict[str, tuple[np.ndarray, Vec]] = {
        # extensor/bursal side of the hip: lateral-posterior to the greater trochanter
        "trochanteric_bursa": (
            troch + np.array([s * 9.0, 12.0, 0.0]),
            _unit((s * 0.55, 0.85, 0.1)),
        ),
        "ischial_bursa": (
            np.array([s * (body.hip_span - 25), 0.5 * b + 10.0, -62.0]),
            _unit((s * 0.2, 1.0, -0.1)),
        ),
        "subcutaneous_buttock": (
            np.array([s * 0.45 * a, b - body.fat * 0.6, -10.0]),
            (0.0, 0.0, 0.0),
        ),
        "subcutaneous_thigh": (
            np.array([tx + s * 0.55 * trx, -0.55 * try_, thigh_z]),
            _unit((s * 0.55, -0.8, 0.0)),
        ),
        "gluteal_muscle": (np.array([s * (body.hip_span + 5), 0.55 * b, 10.0]), (0.0, 0.0, 0.0)),
        "anterior_thigh": (np.array([tx, -0.45 * try_, thigh_z]), (0.0, 0.0, 0.0)),
        "adductor": (np.array([tx - s * 0.45 * trx, 0.1 * try_, thigh_z]), (0.0, 0.0, 0.0)),
        # anterolateral to the hip joint, outside the capsule (near, not in, the joint)
        "juxta_articular": (
            head + np.array([s * (body.head_r + 12.0), -0.5 * body.head_r, -25.0]),
            _unit((s * 0.85, -0.5, -0.15)),
        ),
        "periarticular_hip": (
            troch + np.array([s * 14.0, rng.uniform(-15, 15), rng.uniform(-10, 20)]),
            _unit((s * 1.0, rng.uniform(-0.6, 0.6), rng.uniform(-0.3, 0.5))),
        ),
        # gluteus medius insertion: superolateral facet of the greater trochanter
        "tendon_insertion": (troch + np.array([s * 14.0, 0.0, 14.0]), _unit((s * 0.8, 0.1, 0.6))),
        "femoral_cortex_posterior": (
            np.asarray(_shaft_point(body, s, -85.0)) + np.array([0.0, 14.0, 0.0]),
            (0.0, 1.0, 0.0),
        ),
        "hip_joint": (head, (0.0, 0.0, 0.0)),
    }
    point, direction = table[name]
    if name not in ("hip_joint", "tendon_insertion", "femoral_cortex_posterior"):
        point = point + jitter
    return tuple(float(v) for v in point), direction


def _shaft_point(body: Body, side: int, z: float) -> Vec:
    top, bottom = body.shaft(side)
    t = (z - top[2]) / (bottom[2] - top[2])
    return tuple(a + t * (b - a) for a, b in zip(top, bottom, strict=True))


def fit_inside(body: Body, centre: Vec, radius: float, z_bounds: tuple[float, float]) -> Vec:
    """Pull a lesion centre in so a sphere of ``radius`` (mm) stays inside the skin and the z range
    covered by every modality."""
    x, y, z = centre
    lo, hi = z_bounds
    z = float(np.clip(z, lo + radius, hi - radius)) if hi - lo > 2 * radius else (lo + hi) / 2
    if z >= THIGH_SPLIT_Z:
        (cx, cy), (rx, ry) = (0.0, 0.0), (body.half_width, body.half_depth)
    else:
        (cx, cy), (rx, ry) = body.thigh(1 if x >= 0 else -1)
    rx, ry = max(rx - radius - SKIN_MM, 1.0), max(ry - radius - SKIN_MM, 1.0)
    q = np.hypot((x - cx) / rx, (y - cy) / ry)
    if q > 1.0:
        x, y = cx + (x - cx) / q, cy + (y - cy) / q
    return (float(x), float(y), float(z))


def clear_of_bladder(centre: Vec, radius: float) -> bool:
    """True when a sphere of ``radius`` (mm) at ``centre`` stays ``BLADDER_MARGIN_MM`` away from the
    bladder (conservative: the bladder ellipsoid inflated by radius + margin)."""
    grow = radius + BLADDER_MARGIN_MM
    d = [
        (c - b) / (r + grow)
        for c, b, r in zip(centre, BLADDER_SHAPE.centre, BLADDER_SHAPE.radii, strict=True)
    ]
    return sum(v * v for v in d) > 1.0
