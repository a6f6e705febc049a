"""Lesions of each entity, built from their priors as lists of painted parts.

A lesion is an ordered list of ``Part`` (shape + component name); later parts overwrite earlier ones.
Component values (HU, MR relative to muscle, SUV) are drawn once per lesion. Geometry in LPS mm;
a supine patient's dependent side is posterior (+y), so calcium sediment is cut with normal (0,1,0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calcirad.phantom import anatomy
from calcirad.phantom.geometry import Capsule, Ellipsoid, Shape, Vec
from calcirad.phantom.priors import chance, draw, draw_int

DEPENDENT = (0.0, 1.0, 0.0)  # gravity for a supine patient points posterior (+y in LPS)


@dataclass(frozen=True)
class Part:
    """One painted piece of a lesion; ``ct_scale`` varies density between lobules; parts with
    ``over_bone`` False never replace bone (intra-articular contents); parts with ``in_truth``
    False (perilesional oedema) change the images but are not lesion in the truth mask."""

    shape: Shape
    component: str
    ct_scale: float = 1.0
    over_bone: bool = True
    in_truth: bool = True


@dataclass
class Lesion:
    index: int
    subtype: str
    location: str
    side: int
    centre: Vec
    radius_mm: float
    components: dict[str, dict[str, float]]
    parts: list[Part] = field(default_factory=list)
    lobules: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (truth/<subject>/lesions.json)."""
        return {
            "index": self.index,
            "subtype": self.subtype,
            "location": self.location,
            "side": "L" if self.side > 0 else "R",
            "centre_mm": [round(v, 2) for v in self.centre],
            "radius_mm": round(self.radius_mm, 2),
            "components": {
                k: {q: round(v, 3) for q, v in c.items()}
                for k, c in sorted(self.components.items())
            },
            "lobules": self.lobules,
        }


def _components(spec: dict[str, Any], suvmax: float, rng: np.random.Generator) -> dict:
    """Per-component values of one lesion; ``t1c`` is T1 x (1 + gadolinium enhancement)."""
    out = {}
    for name, comp in spec["components"].items():
        t1 = draw(comp["t1"], rng)
        out[name] = {
            "ct": draw(comp["ct"], rng),
            "t1": t1,
            "t2": draw(comp["t2"], rng),
            "suv": float(comp["suv_frac"]) * suvmax,
            "t1c": t1 * (1.0 + draw(comp.get("enh", 0.0), rng)),
        }
    return out


def _in_ball(rng: np.random.Generator, radius: float) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v) * radius * rng.random() ** (1 / 3)


def _direction(rng: np.random.Generator) -> Vec:
    v = rng.normal(size=3)
    return tuple(float(a) for a in v / np.linalg.norm(v))


def _add(c: Vec | np.ndarray, d: np.ndarray) -> Vec:
    return tuple(float(a + b) for a, b in zip(c, d, strict=True))


# ------------------------------------------------------------------ morphologies ----------
def _lobulated(lesion: Lesion, spec: dict, rng: np.random.Generator, ctx: dict) -> None:
    """TC: a cluster of encapsulated lobules (chicken-wire septa), each calcific, fluid, or fluid
    with a dependent calcium sediment and a flat horizontal level (the sedimentation sign)."""
    R = lesion.radius_mm
    n = min(draw_int(spec["n_lobules"], rng), ctx["max_lobules"])
    septa = draw(spec["septa_mm"], rng)
    p_calc = draw(spec["p_calc_lobule"], rng)
    has_ffl = chance(spec["p_lesion_ffl"], rng)
    frac_ffl = draw(spec["frac_lobules_ffl"], rng)
    lobules = []
    for _ in range(n):
        r = min(draw(spec["lobule_r_mm"], rng), 0.5 * R)
        r = max(r, 2.5)
        centre = _pack(lesion.centre, max(R - r - septa, 0.0), r, lobules, rng)
        u = rng.random()
        kind = "calc" if u < p_calc else ("ffl" if has_ffl and rng.random() < frac_ffl else "fluid")
        lobules.append([centre, r, kind])
    if has_ffl and not any(lob[2] == "ffl" for lob in lobules):
        largest = max(range(n), key=lambda i: lobules[i][1])
        lobules[largest][2] = "ffl"
    for centre, r, _ in lobules:
        lesion.parts.append(Part(Ellipsoid(centre, (r + septa,) * 3), "septa"))
    # contents in order of conspicuity: lobules overlap, and the largest sedimentation level must
    # stay whole (painted last), as in the real multicystic mass where septa separate them
    for centre, r, kind in sorted(lobules, key=lambda lob: (lob[2] == "ffl", lob[1])):
        info: dict[str, Any] = {"centre_mm": [round(v, 2) for v in centre], "r_mm": round(r, 2)}
        if kind == "calc":
            lesion.parts.append(Part(Ellipsoid(centre, (r,) * 3), "calc", rng.uniform(0.85, 1.15)))
        else:
            lesion.parts.append(Part(Ellipsoid(centre, (r,) * 3), "fluid"))
        if kind == "ffl":
            fill = draw(spec["sediment_fill"], rng)
            offset = r * (1.0 - 2.0 * fill)  # sediment occupies the posterior `fill` of the height
            lesion.parts.append(
                Part(Ellipsoid(centre, (r,) * 3, cut=(DEPENDENT, offset)), "sediment")
            )
            info["level_y_mm"] = round(centre[1] + offset, 2)
        info["kind"] = kind
        lesion.lobules.append(info)


def _pack(centre: Vec, spread: float, r: float, lobules: list, rng: np.random.Generator) -> Vec:
    """A lobule centre within ``spread`` of ``centre`` that overlaps the lobules already placed as
    little as possible (best of a few tries): TC lobules are distinct cysts sharing septa."""
    best, best_overlap = None, np.inf
    for _ in range(12):
        candidate = _add(centre, _in_ball(rng, spread))
        overlap = max(
            (
                0.8 * (r + other_r) - np.linalg.norm(np.subtract(candidate, c))
                for c, other_r, _ in lobules
            ),
            default=-1.0,
        )
        if overlap < best_overlap:
            best, best_overlap = candidate, overlap
        if overlap <= 0:
            break
    return best


def _solid_mineralised(lesion: Lesion, spec: dict, rng: np.random.Generator, ctx: dict) -> None:
    """Sarcoma: a solid, lobulated mass with necrotic cavities and a mineral pattern
    (central amorphous, peripheral punctate, or chondroid rings and arcs); optionally one
    haemorrhagic cavity with a dependent haematocrit level (fluid-fluid level, painted last)."""
    R, c = lesion.radius_mm, lesion.centre
    radii = (R, R * rng.uniform(0.7, 1.0), R * rng.uniform(0.9, 1.3))
    lesion.parts.append(Part(Ellipsoid(c, radii), "solid"))
    for _ in range(int(rng.integers(2, 5))):  # lobulated outline
        direction = np.asarray(_direction(rng))
        lesion.parts.append(Part(Ellipsoid(_add(c, direction * 0.6 * R), (0.45 * R,) * 3), "solid"))
    for _ in range(draw_int(spec.get("n_necrosis", 0), rng)):
        r = draw(spec["necrosis_r_frac"], rng) * R
        lesion.parts.append(Part(Ellipsoid(_add(c, _in_ball(rng, 0.5 * R)), (r,) * 3), "necrosis"))
    ffl: list[Part] = []
    if chance(spec.get("p_ffl", 0.0), rng):
        r = max(draw(spec["necrosis_r_frac"], rng) * R, 0.3 * R, 6.0)
        centre = _add(c, _in_ball(rng, max(0.5 * R - r, 0.0)))
        offset = r * (1.0 - 2.0 * draw(spec["sediment_fill"], rng))
        ffl = [
            Part(Ellipsoid(centre, (r,) * 3), "necrosis"),
            Part(Ellipsoid(centre, (r,) * 3, cut=(DEPENDENT, offset)), "sediment"),
        ]
        lesion.lobules.append(
            {
                "centre_mm": [round(v, 2) for v in centre],
                "r_mm": round(r, 2),
                "kind": "ffl",
                "level_y_mm": round(centre[1] + offset, 2),
            }
        )
    if chance(spec.get("p_mineralised", 1.0), rng):
        _mineral(lesion, spec, rng, radii)
    lesion.parts.extend(ffl)


def _mineral(lesion: Lesion, spec: dict, rng: np.random.Generator, radii: Vec) -> None:
    R, c = lesion.radius_mm, lesion.centre
    pattern = spec["mineral_pattern"]
    if pattern == "central_amorphous":
        spread = draw(spec["mineral_frac"], rng) * R
        for _ in range(draw_int(spec.get("n_mineral_blobs", [5, 15]), rng)):
            r = max(2.0, draw(spec.get("mineral_blob_r_frac", [0.05, 0.15]), rng) * R)
            pos = _add(c, rng.normal(0.0, 0.5 * spread + 1e-6, 3))
            lesion.parts.append(Part(Ellipsoid(pos, (r,) * 3), "mineral", rng.uniform(0.7, 1.2)))
    elif pattern == "peripheral_punctate":
        for _ in range(draw_int(spec["n_punctate"], rng)):
            d = np.asarray(_direction(rng)) * rng.uniform(0.7, 0.92)
            pos = _add(c, d * np.asarray(radii))
            r = draw(spec["punctate_r_mm"], rng)
            lesion.parts.append(Part(Ellipsoid(pos, (r,) * 3), "mineral", rng.uniform(0.7, 1.2)))
    elif pattern == "rings_arcs":
        for _ in range(draw_int(spec["n_rings"], rng)):
            r = min(draw(spec["ring_r_mm"], rng), 0.4 * R)
            pos = _add(c, _in_ball(rng, 0.6 * R))
            arc = (_direction(rng), -rng.uniform(0.0, 0.6) * r)  # partial shell: an arc
            lesion.parts.append(Part(Ellipsoid(pos, (r,) * 3, 0.7, arc), "mineral"))
    else:
        raise ValueError(f"unknown mineral_pattern {pattern!r}")


def _surface_ossified(lesion: Lesion, spec: dict, rng: np.random.Generator, ctx: dict) -> None:
    """Parosteal OS: a lobulated ossified mass on the posterior femoral cortex, densest at the base,
    with a soft-tissue cap and optionally a lucent cleft (string sign) against the cortex."""
    R, c = lesion.radius_mm, lesion.centre
    radii = (0.8 * R, 0.55 * R, R)
    away = np.asarray(ctx["direction"])
    lesion.parts.append(Part(Ellipsoid(c, radii), "ossified"))
    lesion.parts.append(
        Part(Ellipsoid(c, radii, cut=(tuple(-away), 0.0)), "ossified", 1.15)
    )  # base half, denser
    f_solid = draw(spec["f_solid"], rng)
    cap = (1.0 - 2.0 * f_solid) * radii[1]
    lesion.parts.append(Part(Ellipsoid(c, radii, cut=(tuple(away), cap)), "solid"))
    if chance(spec["p_string_sign"], rng):
        gap = draw(spec["string_mm"], rng)
        edge = radii[1] - 0.25 * R  # the cleft lies where the mass overhangs the cortex
        lesion.parts.append(
            Part(Ellipsoid(c, radii, cut=(tuple(-away), edge - gap)), "string", over_bone=False)
        )
        lesion.parts.append(Part(Ellipsoid(c, radii, cut=(tuple(-away), edge)), "ossified", 1.15))


def _zonal_shell(lesion: Lesion, spec: dict, rng: np.random.Generator, ctx: dict) -> None:
    """Myositis ossificans / calcified haematoma: a mineralised rim around a soft or fluid core,
    which may hold a dependent sediment."""
    R, c = lesion.radius_mm, lesion.centre
    radii = (R, R * rng.uniform(0.7, 1.0), R * rng.uniform(1.0, 1.5))
    shell = min(draw(spec["shell_mm"], rng), 0.3 * R)
    inner = tuple(r - shell for r in radii)
    lesion.parts.append(Part(Ellipsoid(c, radii), "shell", rng.uniform(0.85, 1.15)))
    lesion.parts.append(Part(Ellipsoid(c, inner), "core"))
    info: dict[str, Any] = {"centre_mm": [round(v, 2) for v in c], "r_mm": round(inner[1], 2)}
    if chance(spec.get("p_ffl", 0.0), rng):
        offset = inner[1] * (1.0 - 2.0 * draw(spec["sediment_fill"], rng))
        lesion.parts.append(Part(Ellipsoid(c, inner, cut=(DEPENDENT, offset)), "sediment"))
        info.update(kind="ffl", level_y_mm=round(c[1] + offset, 2))
    else:
        info["kind"] = "core"
    lesion.lobules.append(info)


def _deposits(lesion: Lesion, spec: dict, rng: np.random.Generator, ctx: dict) -> None:
    """Tendinitis, calcinosis, tophi: one dense (or, for gout, ~160 HU) ovoid deposit."""
    R = lesion.radius_mm
    radii = (R, R * draw(spec["flatten"], rng), R * rng.uniform(0.8, 1.3))
    lesion.parts.append(Part(Ellipsoid(lesion.centre, radii), "deposit", rng.uniform(0.85, 1.15)))


def _intraarticular(lesion: Lesion, spec: dict, rng: np.random.Generator, ctx: dict) -> None:
    """Synovial chondromatosis: a distended hip capsule holding many similar ring-like bodies;
    nothing here replaces bone."""
    body: anatomy.Body = ctx["body"]
    s = lesion.side
    head, troch = np.asarray(body.head(s)), np.asarray(body.trochanter(s))
    eff = draw(spec["effusion_mm"], rng)
    mid = head + 0.3 * (troch - head)
    radii = (
        abs(troch[0] - head[0]) * 0.3 + body.head_r + eff,
        body.head_r + eff,
        body.head_r + eff + 5,
    )
    lesion.parts.append(Part(Ellipsoid(tuple(mid), radii), "effusion", over_bone=False))
    neck = Capsule(tuple(head), tuple(troch), 0.6 * body.head_r)
    p_min = draw(spec["p_body_mineralised"], rng)
    placed = 0
    for _ in range(draw_int(spec["n_bodies"], rng) * 20):
        if placed >= ctx["max_bodies"]:
            break
        r = draw(spec["body_r_mm"], rng)
        pos = mid + rng.uniform(-1, 1, 3) * np.asarray(radii)
        if ((pos - mid) / np.asarray(radii)) @ ((pos - mid) / np.asarray(radii)) > 0.8:
            continue
        near_neck = (
            neck.inside(*(np.array([v]) for v in pos))[0]
            or np.linalg.norm(pos - head) < body.head_r + r
        )
        if near_neck:
            continue
        centre = tuple(float(v) for v in pos)
        if rng.random() < p_min:
            lesion.parts.append(Part(Ellipsoid(centre, (r,) * 3), "rim", over_bone=False))
            lesion.parts.append(Part(Ellipsoid(centre, (0.6 * r,) * 3), "core", over_bone=False))
        else:
            lesion.parts.append(Part(Ellipsoid(centre, (r,) * 3), "core", over_bone=False))
        placed += 1
    lesion.lobules.append({"kind": "bodies", "n": placed})


MORPHOLOGIES = {
    "lobulated": _lobulated,
    "solid_mineralised": _solid_mineralised,
    "surface_ossified": _surface_ossified,
    "zonal_shell": _zonal_shell,
    "deposits": _deposits,
    "intraarticular": _intraarticular,
}


def _place(
    body: anatomy.Body, point: Vec, direction: Vec, R: float, sink: float, z_bounds: tuple
) -> Vec:
    """Lesion centre ``R`` out from the anchor (less ``sink`` x R into the bone, else a 1.5 mm gap),
    pulled inside the skin and the common z range."""
    gap = -sink * R if sink else 1.5
    centre = tuple(p + d * (R + gap) for p, d in zip(point, direction, strict=True))
    return anatomy.fit_inside(body, centre, R, z_bounds)


def _overlap(centre: Vec, radius: float, other: Lesion) -> bool:
    gap = np.linalg.norm(np.subtract(centre, other.centre))
    return bool(gap < radius + other.radius_mm + 2.0)


def _site(
    spec: dict, body: anatomy.Body, location: str, side: int, R: float, rng, z_bounds: tuple
) -> tuple[Vec, Vec, float, bool]:
    """(grow direction, centre, radius, erosion) of a lesion of radius ``R`` at ``location``."""
    point, direction = anatomy.anchor(body, location, side, rng)
    erosion = chance(spec.get("p_bone_erosion", spec.get("p_erosion", 0.0)), rng)
    # an eroding lesion sinks into the bone it abuts; a surface lesion sits on the cortex
    sink = 0.1 if spec["morphology"] == "surface_ossified" else 0.3 if erosion else 0.0
    if spec["morphology"] == "intraarticular":
        centre = tuple(p + d * (R + 1.5) for p, d in zip(point, direction, strict=True))
        return direction, centre, R, erosion
    centre = _place(body, point, direction, R, sink, z_bounds)
    # a lesion pulled inside the skin must not engulf the bladder: shrink it instead
    for _ in range(10):
        if anatomy.clear_of_bladder(centre, R):
            break
        R *= 0.85
        centre = _place(body, point, direction, R, sink, z_bounds)
    return direction, centre, R, erosion


def build_lesions(
    *,
    subtype: str,
    spec: dict[str, Any],
    body: anatomy.Body,
    rng: np.random.Generator,
    limits: dict[str, Any],
    z_bounds: tuple[float, float],
) -> tuple[list[Lesion], float]:
    """All lesions of one subject and the drawn lesion SUVmax (before the PET blur).

    ``limits`` holds the size-dependent caps (max_lesion_diam_mm, max_lobules); ``z_bounds`` (mm)
    is the z range every modality covers.
    """
    n = max(1, draw_int(spec.get("n_lesions", 1), rng))
    bilateral = chance(spec.get("p_bilateral", 0.0), rng)
    side0 = 1 if rng.random() < 0.5 else -1
    suvmax = draw(spec["suvmax"], rng)
    # small lesions (partial-volume confounder): the PET blur lowers their measured SUVmax
    small = chance(spec.get("p_small", 0.0), rng)
    diam0 = draw(spec["small_diam_mm"] if small else spec["diam_mm"], rng)
    diam0 = min(diam0, limits["max_lesion_diam_mm"])
    lesions: list[Lesion] = []
    for i in range(n):
        side = side0 if not bilateral or i % 2 == 0 else -side0
        diam = diam0 if i == 0 else diam0 * rng.uniform(0.4, 0.9)
        placed = None
        for _ in range(6):  # another lesion is another bursa: never on top of an earlier one
            location = draw(spec["location"], rng)
            placed = _site(spec, body, location, side, diam / 2.0, rng, z_bounds)
            if not any(_overlap(placed[1], placed[2], other) for other in lesions):
                break
            placed = None
        if placed is None:
            continue
        direction, centre, R, erosion = placed
        lesion_suv = suvmax if i == 0 else suvmax * rng.uniform(0.6, 1.0)
        lesion = Lesion(
            index=len(lesions) + 1,
            subtype=subtype,
            location=location,
            side=side,
            centre=centre,
            radius_mm=R,
            components=_components(spec, lesion_suv, rng),
        )
        ctx = {
            "body": body,
            "direction": direction,
            "max_lobules": limits["max_lobules"],
            "max_bodies": limits["max_lobules"] * 2,
            "erosion": erosion,
        }
        MORPHOLOGIES[spec["morphology"]](lesion, spec, rng, ctx)
        if chance(spec.get("p_edema", 0.0), rng):
            # perilesional (muscle) oedema: changes T2/T1c/CT around the mass, not in the truth
            rim = R * 1.2 + draw(spec["edema_mm"], rng)
            radii = (rim, rim * rng.uniform(0.8, 1.0), rim * rng.uniform(1.0, 1.4))
            edema = Part(Ellipsoid(lesion.centre, radii), "edema", over_bone=False, in_truth=False)
            lesion.parts.insert(0, edema)
        lesions.append(lesion)
        if spec["morphology"] == "intraarticular":
            break  # one joint
    return lesions, suvmax
