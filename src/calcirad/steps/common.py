"""What every step shares: logging to the job's log file, status records, deterministic JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from calcirad.atomic import write_text
from calcirad.errors import SubjectInputError

log = logging.getLogger("calcirad")

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_ABSENT = "absent"
STATUS_EXCLUDED = "excluded"

MUSCLE_PREFIX = "muscle_"  # masks/<subject>/muscle_t1.nii.gz: reference muscle on that MR grid


@contextlib.contextmanager
def job_log(path: str | Path | None) -> Iterator[logging.Logger]:
    """Send the calcirad logger (and Python warnings) to ``path`` for the duration of a job."""
    # The log file only: Snakemake prints failed jobs' logs (show-failed-logs in the profiles),
    # and a quiet console keeps the cohort's progress readable.
    handlers: list[logging.Handler] = []
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w", encoding="utf-8"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield log
    except Exception:
        log.exception("job failed")
        raise
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()
        logging.captureWarnings(False)


def _clean(value: Any) -> Any:
    """Make a value JSON-safe and stable: NaN/inf become None, paths strings, numpy scalars plain."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, 2-space indent, trailing newline)."""
    return json.dumps(_clean(obj), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as deterministic JSON, atomically."""
    write_text(path, dumps(obj))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def failure(*, subject: str, stage: str, error: Exception, modality: str | None = None) -> dict:
    """A failure record for ``results/tables/failures.csv``."""
    reason = (
        str(error) if isinstance(error, SubjectInputError) else f"{type(error).__name__}: {error}"
    )
    return {"subject": subject, "stage": stage, "modality": modality, "reason": reason}


def code_version(*modules: str) -> str:
    """sha256 (first 12 hex digits) of the source of the given calcirad modules or subpackages.

    Passed as a rule ``param`` so that editing the code of a stage reruns that stage's jobs
    (Snakemake does not track imported modules), and nothing else.
    """
    import importlib.util

    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"no module {name}")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        files += sorted(origin.parent.rglob("*.yaml")) if origin.name == "__init__.py" else []
        for path in files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
