"""Load the phantom priors (``priors.yaml``) and draw values from their distribution specs.

Every number the generator uses comes from here, so the cohort can be recalibrated without code.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
import yaml

from calcirad.errors import ConfigError

Priors = dict[str, Any]


def load_priors(path: str | os.PathLike[str] | None = None) -> Priors:
    """Read the priors (the packaged ``priors.yaml`` unless ``path`` is given), resolving ``inherit``."""
    if path is None:
        text = resources.files("calcirad.phantom").joinpath("priors.yaml").read_text("utf-8")
    else:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    priors = yaml.safe_load(text)
    entities = _apply_confounders(priors.get("confounders", {}), priors["entities"])
    priors["entities"] = {name: _resolve(name, entities) for name in entities}
    return priors


DISTRIBUTION_KEYS = frozenset({"range", "mode", "mean", "sd", "choices"})


def _is_leaf(value: Any) -> bool:
    """A distribution spec (``{range, mode}``, ``{choices}``...) is replaced whole, never merged."""
    return not isinstance(value, Mapping) or bool(DISTRIBUTION_KEYS & set(value))


def _apply_confounders(
    confounders: Mapping[str, Any], entities: Mapping[str, Any]
) -> dict[str, Any]:
    """Merge each enabled confounder's per-entity overrides into the raw entities (before
    ``inherit`` is resolved, so children inherit them); ``"*"`` targets every entity."""
    out = {name: copy.deepcopy(dict(spec)) for name, spec in entities.items()}
    for name, confounder in (confounders or {}).items():
        if not confounder.get("enabled", False):
            continue
        for target, override in confounder.get("entities", {}).items():
            names = list(out) if target == "*" else [target]
            unknown = [n for n in names if n not in out]
            if unknown:
                raise ConfigError(f"priors: confounder {name!r} targets unknown entity {unknown}")
            for entity in names:
                out[entity] = _merge(out[entity], override)
    return out


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        mergeable = not _is_leaf(value) and not _is_leaf(out.get(key))
        if mergeable and key != "location":
            # components / clinical: override per field, keep the parent's other fields
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(name: str, entities: Mapping[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    spec = entities[name]
    parent = spec.get("inherit")
    if parent is None:
        return copy.deepcopy(dict(spec))
    if parent in seen or parent not in entities:
        raise ConfigError(f"priors: entity {name!r} inherits from unknown or cyclic {parent!r}")
    merged = _merge(_resolve(parent, entities, (*seen, name)), spec)
    merged.pop("inherit", None)
    return merged


def draw(spec: Any, rng: np.random.Generator) -> Any:
    """Draw one value from a prior spec (constant, ``[a, b]``, triangular, clipped normal, choices)."""
    if isinstance(spec, int | float | str | bool) or spec is None:
        return spec
    if isinstance(spec, list | tuple):
        low, high = float(spec[0]), float(spec[1])
        return float(rng.uniform(low, high))
    if isinstance(spec, Mapping):
        if "choices" in spec:
            names = list(spec["choices"])
            weights = np.asarray([float(spec["choices"][n]) for n in names])
            return names[int(rng.choice(len(names), p=weights / weights.sum()))]
        if "mode" in spec:
            low, high = (float(v) for v in spec["range"])
            return float(rng.triangular(low, float(spec["mode"]), high))
        if "mean" in spec:
            value = float(rng.normal(float(spec["mean"]), float(spec["sd"])))
            if "range" in spec:
                value = float(np.clip(value, *spec["range"]))
            return value
    raise ConfigError(f"priors: cannot draw from spec {spec!r}")


def draw_int(spec: Any, rng: np.random.Generator) -> int:
    """Draw an integer count (uniform specs include both ends)."""
    if isinstance(spec, list | tuple):
        return int(rng.integers(int(spec[0]), int(spec[1]) + 1))
    return int(round(draw(spec, rng)))


def chance(spec: Any, rng: np.random.Generator) -> bool:
    """Bernoulli trial whose probability is itself drawn from ``spec``."""
    return bool(rng.random() < draw(spec, rng))
