"""Publication tables: one DataFrame written as CSV, Markdown and LaTeX with a provenance footer.

Outputs are byte-identical for identical inputs: fixed float formatting, ``\\n`` newlines, sorted
provenance keys, no timestamps. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from calcirad.atomic import write_text
from calcirad.model.feature_sets import CLASSES
from calcirad.plan import config_hash

PACKAGES = ("calcirad", "numpy", "pandas", "scikit-learn", "scipy")
MISSING_TEXT = "NA"

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def build_provenance(*, config: dict, seed: int, extra: dict | None = None) -> dict:
    """Provenance for :func:`write_table`: config hash, seed and package versions."""
    return {"config_sha256": config_hash(config), "seed": seed, "packages": package_versions()} | (
        extra or {}
    )


def _sibling(stem: Path, suffix: str) -> Path:
    # with_suffix would eat a dotted stem such as "performance.v2"; append instead.
    return stem.with_name(stem.name + suffix)


def format_cell(value, float_format: str) -> str:
    """Text of one cell: floats via ``float_format``, missing values as ``NA``."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING_TEXT
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def formatted(df: pd.DataFrame, float_format: str) -> list[list[str]]:
    """All cells as text, row by row."""
    return [
        [format_cell(v, float_format) for v in row]
        for row in df.astype(object).itertuples(index=False)
    ]


def provenance_line(provenance: dict) -> str:
    """One line ``key: value; ...`` (nested dicts flattened, keys sorted)."""
    parts = []
    for key, value in sorted(_flatten(provenance).items()):
        parts.append(f"{key}: {value}")
    return "Provenance: " + "; ".join(parts)


def _flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, prefix=f"{name}.")
        else:
            flat[name] = value
    return flat


def to_markdown(df: pd.DataFrame, *, caption: str, provenance: dict, float_format: str) -> str:
    """GitHub-flavoured Markdown table with caption above and provenance below."""
    body = tabulate(
        formatted(df, float_format), headers=[str(c) for c in df.columns], tablefmt="github",
        disable_numparse=True,
    )  # fmt: skip
    return f"**{caption}**\n\n{body}\n\n_{provenance_line(provenance)}_\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters."""
    return "".join(_LATEX_ESCAPES.get(char, char) for char in text)


def to_latex(df: pd.DataFrame, *, caption: str, provenance: dict, float_format: str) -> str:
    """A booktabs ``table`` environment; the provenance is a footnote-size line under the tabular."""
    header = " & ".join(latex_escape(str(c)) for c in df.columns) + r" \\"
    rows = [
        " & ".join(latex_escape(cell) for cell in row) + r" \\"
        for row in formatted(df, float_format)
    ]
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        header,
        r"\midrule",
        *rows,
        r"\bottomrule",
        r"\end{tabular}",
        rf"\par\footnotesize {latex_escape(provenance_line(provenance))}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """CSV with full float precision (``repr``), ``NA`` for missing values, no index."""
    return df.to_csv(index=False, na_rep=MISSING_TEXT, lineterminator="\n")


def write_table(
    df: pd.DataFrame,
    *,
    stem: Path,
    caption: str,
    provenance: dict,
    float_format: str = "{:.3f}",
) -> list[Path]:
    """Write ``stem.csv``, ``stem.md``, ``stem.tex`` and ``stem.provenance.json``; return their paths."""
    stem = Path(stem)
    texts = {
        ".csv": to_csv(df),
        ".md": to_markdown(df, caption=caption, provenance=provenance, float_format=float_format),
        ".tex": to_latex(df, caption=caption, provenance=provenance, float_format=float_format),
        ".provenance.json": json.dumps(provenance, sort_keys=True, indent=2, default=str) + "\n",
    }
    paths = []
    for suffix, text in texts.items():
        path = _sibling(stem, suffix)
        write_text(path, text)
        paths.append(path)
    return paths


# --- Table 1 ----------------------------------------------------------------------------------


def _subject_indexed(df: pd.DataFrame) -> pd.DataFrame:
    """The frame indexed by ``subject`` (accepts a ``subject`` column or index)."""
    if "subject" in df.columns:
        df = df.set_index("subject")
    df = df.copy()
    df.index = df.index.astype(str)
    return df


def _count(mask: pd.Series, total: int) -> str:
    n = int(mask.sum())
    return f"{n} ({100 * n / total:.0f}%)" if total else "0"


def _median_iqr(values: pd.Series) -> str:
    values = values.dropna().astype(float)
    if values.empty:
        return MISSING_TEXT
    q1, median, q3 = values.quantile([0.25, 0.5, 0.75])
    return f"{median:.1f} ({q1:.1f}-{q3:.1f})"


def _groups(samples: pd.DataFrame) -> dict[str, pd.Index]:
    """Subjects per label column of Table 1 (labels in the canonical order, then 'all')."""
    labels = samples["label"].astype(str).str.strip().str.lower()
    order = [c for c in CLASSES if c in set(labels)] + sorted(set(labels) - set(CLASSES))
    groups = {name: samples.index[(labels == name).to_numpy()] for name in order}
    return groups | {"all": samples.index}


def cohort_table(
    *,
    samples: pd.DataFrame,
    availability: pd.DataFrame,
    volumes: pd.Series | None = None,
    failures: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Table 1: subjects per label, site, modality availability, lesion volume and exclusions.

    ``samples``: one row per subject with ``label`` (optional ``site``, ``age``, ``sex``);
    ``availability``: subject x modality booleans; ``volumes``: lesion volume (ml) per subject;
    ``failures``: one row per failed subject and stage (``subject``, ``stage``). Percentages are
    of the label's subjects; failed subjects stay in the counts above their exclusion rows.
    """
    samples = _subject_indexed(samples).sort_index()
    groups = _groups(samples)
    rows: list[tuple[str, dict[str, str]]] = [
        ("Subjects, n", {g: str(len(idx)) for g, idx in groups.items()})
    ]
    rows += _category_rows(samples, groups, column="site", title="Site")
    rows += _covariate_rows(samples, groups)
    rows += _availability_rows(_subject_indexed(availability), groups)
    if volumes is not None:
        volumes = volumes.copy()
        volumes.index = volumes.index.astype(str)
        rows.append(
            (
                "Lesion volume, ml, median (IQR)",
                {g: _median_iqr(volumes.reindex(idx)) for g, idx in groups.items()},
            )
        )
    if failures is not None:
        rows += _failure_rows(_subject_indexed(failures), groups)
    table = pd.DataFrame([values for _, values in rows], index=[name for name, _ in rows])
    table.index.name = "characteristic"
    return table.reset_index()


def _category_rows(samples, groups, *, column: str, title: str) -> list[tuple[str, dict]]:
    if column not in samples.columns:
        return []
    values = samples[column].astype(str)
    return [
        (
            f"{title}: {level}, n (%)",
            {g: _count(values.reindex(idx) == level, len(idx)) for g, idx in groups.items()},
        )
        for level in sorted(values.unique())
    ]


def _covariate_rows(samples, groups) -> list[tuple[str, dict]]:
    rows = []
    if "age" in samples.columns:
        rows.append(
            (
                "Age, y, median (IQR)",
                {g: _median_iqr(samples.loc[idx, "age"]) for g, idx in groups.items()},
            )
        )
    rows += _category_rows(samples, groups, column="sex", title="Sex")
    return rows


def _availability_rows(availability, groups) -> list[tuple[str, dict]]:
    rows = []
    for modality in availability.columns:
        present = availability[modality].astype(bool)
        rows.append(
            (
                f"{str(modality).upper()} available, n (%)",
                {
                    g: _count(present.reindex(idx, fill_value=False), len(idx))
                    for g, idx in groups.items()
                },
            )
        )
    return rows


def _failure_rows(failures, groups) -> list[tuple[str, dict]]:
    stage = (
        failures["stage"].astype(str)
        if "stage" in failures.columns
        else pd.Series("any", index=failures.index)
    )
    rows = []
    for name in sorted(stage.unique()):
        failed = set(stage.index[(stage == name).to_numpy()])
        rows.append(
            (
                f"Excluded at {name}, n",
                {g: str(len(failed & set(idx))) for g, idx in groups.items()},
            )
        )
    return rows
