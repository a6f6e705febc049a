"""What the workflow decides at parse time, kept light (standard library only).

The Snakefile imports this module, not the stage modules: Snakemake parses the Snakefile in every
run, dry run and cluster job, and importing scikit-learn, SciPy or SimpleITK there cost seconds
each time. The stage modules import these names from here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from calcirad.errors import ConfigError

# Figures written per task by rule figures (results/figures/{figure}_{task}.png|svg).
FIGURES = ("roc", "calibration", "confusion", "importance", "permutation")


def config_hash(config: dict) -> str:
    """SHA-256 of the configuration as canonical JSON (key order does not matter)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def select_subjects(subjects: Sequence[str], choice: int | str | Sequence[str]) -> list[str]:
    """The subjects whose masks are perturbed for feature stability, in sorted order.

    ``all``: every subject; an integer ``N``: the ``N`` subjects with the smallest sha256 of
    their ID (deterministic, independent of sheet order and of labels; adding a subject changes
    the choice only if its hash ranks among the first ``N``); ``0``: none; a list: exactly those
    subjects (each must be in the sheet).
    """
    subjects = [str(s) for s in subjects]
    if isinstance(choice, str):
        if choice != "all":
            raise ConfigError(
                f"stability.subjects must be 'all', a count or a list, not {choice!r}"
            )
        return sorted(subjects)
    if isinstance(choice, int) and not isinstance(choice, bool):
        if choice < 0:
            raise ConfigError(f"stability.subjects must be >= 0, not {choice}")
        ranked = sorted(subjects, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
        return sorted(ranked[:choice])
    chosen = [str(s) for s in choice]
    unknown = sorted(set(chosen) - set(subjects))
    if unknown:
        raise ConfigError(f"stability.subjects names subjects not in the sample sheet: {unknown}")
    return sorted(set(chosen))
