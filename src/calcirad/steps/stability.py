"""Step 3b: features of one subject and modality under mask perturbations; the ICC table."""

from __future__ import annotations

from pathlib import Path

from calcirad.atomic import atomic_path
from calcirad.stability import perturbed_features, stability_table
from calcirad.steps.common import STATUS_OK, log, read_json, write_json
from calcirad.steps.features import modality_inputs


def run_stability(
    *,
    subject: str,
    modality: str,
    nifti_dir: str | Path,
    masks_dir: str | Path,
    params_file: str | Path,
    perturbations: list[str],
    out_json: str | Path,
) -> dict:
    """Extract one subject's features on one modality under each mask perturbation.

    ``status`` is ``absent`` (no such series), ``excluded`` (no lesion mask: segmentation failed
    and recorded why in failures.csv) or ``ok``; a perturbation the extraction refused is marked
    failed inside ``perturbations`` with its reason, and the subject then stays out of that
    modality's ICCs (they need every perturbation of a subject).
    """
    record: dict = {"subject": subject, "modality": modality, "stage": "stability"}
    paths, skip = modality_inputs(modality=modality, nifti_dir=nifti_dir, masks_dir=masks_dir)
    if skip:
        record.update(skip)
    else:
        runs = perturbed_features(
            **paths,
            params_file=Path(params_file),
            modality=modality,
            perturbations=list(perturbations),
        )
        for name, run in runs.items():
            if run["status"] == "ok":
                log.info("%s %s %s: volume %.3f ml", subject, modality, name, run["volume_ml"])
            else:
                log.warning("%s %s %s: %s", subject, modality, name, run["reason"])
        record.update(status=STATUS_OK, perturbations=runs)
    write_json(out_json, record)
    return record


def write_stability_table(
    *, records: list[str | Path], perturbations: list[str], out_csv: str | Path
) -> None:
    """``results/tables/feature_stability.csv``: ICC(3,1) per modality and feature."""
    loaded = [read_json(path) for path in records]
    table = stability_table(loaded, perturbations=perturbations)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n", float_format="%.6g")
    for modality, rows in table.groupby("modality"):
        log.info(
            "%s: %d features, %d subjects, median ICC %.3f, %.0f%% >= 0.75",
            modality,
            len(rows),
            int(rows["n_subjects"].max()),
            rows["icc"].median(),
            100 * (rows["icc"] >= 0.75).mean(),
        )
