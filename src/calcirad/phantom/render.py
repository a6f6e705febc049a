"""Sample the subject (body + lesions) on one grid as an ideal property map, before any physics.

``key`` picks the property: ``ct`` (HU), ``t1`` / ``t2`` / ``t1c`` (MR signal relative to
unenhanced muscle; ``t1c`` = T1 x (1 + gadolinium enhancement)) or ``suv`` (FDG SUVbw). The same scene is rendered on every modality's own grid, so all series are
co-registered in one LPS frame without resampling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from calcirad.phantom import anatomy
from calcirad.phantom.geometry import Grid
from calcirad.phantom.lesions import Lesion


def tissue_value(props: Mapping[str, float], key: str) -> float:
    """A background tissue's property; ``t1c`` derives from ``t1`` and the enhancement ``enh``."""
    if key == "t1c":
        return float(props["t1"]) * (1.0 + float(props.get("enh", 0.0)))
    return float(props[key])


def render(
    *,
    grid: Grid,
    body: anatomy.Body,
    tissues: Mapping[str, Mapping[str, float]],
    lesions: Sequence[Lesion],
    key: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (property map float32, lesion label map int16 0..k, normal-bone mask bool)."""
    labels = anatomy.label_map(body, grid)
    lut = np.zeros(len(anatomy.TISSUES), dtype=np.float32)
    for code, name in anatomy.TISSUES.items():
        lut[code] = tissue_value(tissues[name], key)
    values = lut[labels]
    bone = anatomy.bone_mask(labels)
    truth = np.zeros(grid.shape, dtype=np.int16)
    for lesion in lesions:
        for part in lesion.parts:
            low, high = part.shape.bbox()
            index, coords = grid.block(low, high)
            if any(s.stop <= s.start for s in index):
                continue
            mask = part.shape.inside(*coords)
            if not part.over_bone:
                mask &= ~bone[index]
            value = lesion.components[part.component][key]
            if key == "ct":
                value *= part.ct_scale
            values[index][mask] = value
            if part.in_truth:
                truth[index][mask] = lesion.index
            else:
                truth[index][mask] = 0
    bone &= truth == 0  # bone replaced by a lesion (erosion) is no longer normal bone
    return values, truth, bone
