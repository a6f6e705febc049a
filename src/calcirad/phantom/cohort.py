"""Orchestration: plan a balanced cohort, simulate each subject (in parallel), write the tables.

Layout under ``out``: ``dicom/<subject>/<series>/IM####.dcm``, ``samples.tsv``,
``truth/labels.tsv``, ``truth/<subject>/{lesion,bone}.nii.gz`` (CT grid) and ``lesions.json``.
With messy exports on (priors ``messy``), a subject may instead have all its files in
``dicom/<subject>/EXPORT/`` under opaque names, a localizer, a compressed transfer syntax or a
missing slice; ``truth/labels.tsv`` says which (column ``export``).
Everything is a function of (seed, n, size, subtypes, priors, messy): no wall clock, no global state.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.uid
import SimpleITK as sitk
from pydicom.pixels.encoders.base import get_encoder
from scipy import ndimage

from calcirad.atomic import write_text
from calcirad.errors import ConfigError
from calcirad.phantom import anatomy
from calcirad.phantom.dicom_writer import Study, uid, write_series
from calcirad.phantom.geometry import Grid
from calcirad.phantom.identity import make_identity
from calcirad.phantom.lesions import Lesion, build_lesions
from calcirad.phantom.modalities import (
    Acquisition,
    acquisitions,
    encode,
    form_image,
    ideal_image,
    localizer,
)
from calcirad.phantom.priors import Priors, chance, draw, load_priors
from calcirad.phantom.render import render

SubtypeSpec = Sequence[str] | Mapping[str, float] | None
VOLUME_CENTRE = (0.0, 0.0, -40.0)  # LPS mm: grids centre below the femoral heads to cover the hips
SAMPLE_COLUMNS = ["subject", "label", "site", "dicom", "age", "sex", "eskd", "phosphate_mg_dl"]
TRUTH_COLUMNS = [
    "subject",
    "label",
    "subtype",
    "site",
    "n_lesions",
    "lesion_volume_ml",
    "suvmax_true",
    "age",
    "sex",
    "eskd",
    "phosphate_mg_dl",
    "ct_mean_hu_true",
    "weight_kg",
    "t1c",
    "export",
]
MESSY_CASES = ("mixed_folder", "scout", "compressed", "missing_slice")
MessySpec = bool | Mapping[str, Any] | None


@dataclass(frozen=True)
class SubjectPlan:
    subject: str
    index: int
    label: str
    subtype: str
    site: str


def _subtype_weights(priors: Priors, subtypes: SubtypeSpec) -> dict[str, dict[str, float]]:
    """label -> {subtype: weight}, from the priors or the caller's selection."""
    entities = priors["entities"]
    if subtypes is None:
        return {
            label: dict(priors["cohort"]["subtypes"][label]) for label in priors["cohort"]["labels"]
        }
    chosen = dict(subtypes) if isinstance(subtypes, Mapping) else dict.fromkeys(subtypes, 1.0)
    unknown = sorted(set(chosen) - set(entities))
    if unknown:
        raise ConfigError(f"unknown subtype(s) {unknown}; known: {sorted(entities)}")
    out: dict[str, dict[str, float]] = {}
    for name, weight in chosen.items():
        out.setdefault(entities[name]["label"], {})[name] = float(weight)
    return {label: out[label] for label in priors["cohort"]["labels"] if label in out}


def _allocate(weights: Mapping[str, float], m: int) -> list[str]:
    """Largest-remainder allocation of ``m`` subjects to subtypes (deterministic, balanced)."""
    names = list(weights)
    w = np.asarray([weights[k] for k in names], dtype=float)
    quota = w / w.sum() * m
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts), kind="stable")[: m - counts.sum()]:
        counts[i] += 1
    return [name for name, c in zip(names, counts, strict=True) for _ in range(c)]


def plan_cohort(
    *, n: int, seed: int, priors: Priors, subtypes: SubtypeSpec = None
) -> list[SubjectPlan]:
    """Balanced labels (counts differ by at most one), subtypes by their mix, sites balanced
    within each label; order shuffled so subject IDs carry no label information."""
    rng = np.random.default_rng([seed, 0])
    weights = _subtype_weights(priors, subtypes)
    labels = list(weights)
    sites = sorted(priors["sites"])
    slots = [labels[i % len(labels)] for i in range(n)]
    assignments = []
    for label in labels:
        m = slots.count(label)
        kinds = list(rng.permutation(_allocate(weights[label], m)))
        offset = int(rng.integers(len(sites)))
        assignments += [
            (label, str(k), sites[(i + offset) % len(sites)]) for i, k in enumerate(kinds)
        ]
    order = rng.permutation(len(assignments))
    return [SubjectPlan(f"S{i + 1:03d}", i + 1, *assignments[j]) for i, j in enumerate(order)]


def _clinical(spec: dict[str, Any], priors: Priors, rng: np.random.Generator) -> dict[str, Any]:
    c = {**priors["clinical_default"], **spec.get("clinical", {})}
    eskd = chance(c["p_eskd"], rng)
    phosphate = c["phosphate_mg_dl"]
    if eskd and "phosphate_mg_dl" not in spec.get("clinical", {}):
        phosphate = c["phosphate_eskd_mg_dl"]
    return {
        "age": int(round(draw(c["age"], rng))),
        "sex": "M" if chance(c["p_male"], rng) else "F",
        "eskd": int(eskd),
        "phosphate_mg_dl": round(draw(phosphate, rng), 1),
    }


def _times(priors: Priors, rng: np.random.Generator) -> dict[str, dt.datetime]:
    first, last = (dt.date.fromisoformat(d) for d in priors["cohort"]["study_date_range"])
    day = first + dt.timedelta(days=int(rng.integers(0, (last - first).days + 1)))
    (h0, m0), (h1, m1) = priors["cohort"]["series_time_hhmm"]
    lo, hi = int(h0) * 3600 + int(m0) * 60, int(h1) * 3600 + int(m1) * 60
    pet = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=int(rng.integers(lo, hi)))
    uptake_s = int(round(draw(priors["pet"]["uptake_min"], rng) * 60))
    return {
        "injection": pet - dt.timedelta(seconds=uptake_s),
        "ct": pet - dt.timedelta(minutes=3),
        "pet": pet,
        "CT": pet - dt.timedelta(minutes=3),
        "PET": pet,
        "MR_T1": pet + dt.timedelta(minutes=45),
        "MR_T2": pet + dt.timedelta(minutes=51),
        "MR_T1C": pet + dt.timedelta(minutes=45 + int(priors["contrast"]["series_after_t1_min"])),
    }


def resolve_messy(priors: Priors, messy: MessySpec) -> dict[str, Any] | None:
    """The messy-export settings in force, or None when off.

    ``messy`` None follows the priors' ``messy.enabled``; True/False force the priors' fractions
    on/off; a mapping turns on only the cases it names (fraction 0-1 each; ``syntaxes`` optional).
    """
    block = dict(priors.get("messy") or {})
    if messy is None:
        messy = bool(block.get("enabled", False))
    if messy is False:
        return None
    given = dict(block) if messy is True else dict(messy)
    unknown = sorted(set(given) - {*MESSY_CASES, "syntaxes", "enabled"})
    if unknown:
        raise ConfigError(f"unknown messy export case(s) {unknown}; known: {list(MESSY_CASES)}")
    out: dict[str, Any] = {}
    for case in MESSY_CASES:
        value = float(given.get(case, 0.0))
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"messy.{case} must be a fraction in [0, 1], got {value}")
        out[case] = value
    syntaxes = list(given.get("syntaxes", block.get("syntaxes", ["RLELossless"])))
    for name in syntaxes:
        syntax = getattr(pydicom.uid, str(name), None)
        if not isinstance(syntax, pydicom.uid.UID) or not syntax.is_compressed:
            raise ConfigError(f"messy.syntaxes: {name!r} is not a compressed transfer syntax")
        encoder = get_encoder(syntax) if syntax.is_encapsulated else None
        if encoder is None or not encoder.is_available:
            raise ConfigError(f"messy.syntaxes: no pydicom encoder installed for {name}")
    out["syntaxes"] = syntaxes
    return out


@dataclass(frozen=True)
class ExportPlan:
    """How one subject's study is exported: the messy cases that apply to it."""

    mixed_folder: bool = False
    scout: bool = False
    syntax: str | None = None  # pydicom.uid name of the compressed transfer syntax
    missing_series: int | None = None  # index into the subject's series list
    missing_at: float = 0.5  # where in that series (fraction of its slices)

    def notes(self, missing: str | None) -> str:
        parts = ["mixed_folder"] if self.mixed_folder else []
        parts += ["scout"] if self.scout else []
        parts += [f"compressed={self.syntax}"] if self.syntax else []
        parts += [f"missing_slice={missing}"] if missing else []
        return ";".join(parts) or "clean"


def plan_export(messy: Mapping[str, Any] | None, *, seed: int, index: int) -> ExportPlan:
    """Draw a subject's messy cases from its own stream ``[seed, 3, index]`` (a fixed number of
    draws, so each case depends only on its own fraction and never on the images)."""
    if not messy:
        return ExportPlan()
    rng = np.random.default_rng([seed, 3, index])
    u = rng.random(len(MESSY_CASES))
    syntax = messy["syntaxes"][int(rng.integers(len(messy["syntaxes"])))]
    series, at = int(rng.integers(1 << 30)), float(rng.uniform(0.3, 0.7))
    hit = {case: bool(u[i] < messy[case]) for i, case in enumerate(MESSY_CASES)}
    return ExportPlan(
        mixed_folder=hit["mixed_folder"],
        scout=hit["scout"],
        syntax=syntax if hit["compressed"] else None,
        missing_series=series if hit["missing_slice"] else None,
        missing_at=at,
    )


def _drop_slice(study_dir: Path, plan: ExportPlan) -> str:
    """Delete one slice file inside one volume series (never the first or last); return it."""
    folders = sorted(p for p in study_dir.iterdir() if p.is_dir() and p.name != "SCOUT_1")
    folder = folders[plan.missing_series % len(folders)]
    files = sorted(folder.glob("*.dcm"))
    k = min(max(1, int(plan.missing_at * len(files))), len(files) - 2)
    files[k].unlink()
    return f"{folder.name}/{files[k].name}"


def _flatten(study_dir: Path, *, seed: int, index: int) -> None:
    """Move every file into ``EXPORT/`` under opaque names (no extension), series interleaved."""
    files = sorted(study_dir.rglob("*.dcm"))
    order = np.random.default_rng([seed, 4, index]).permutation(len(files))
    flat = study_dir / "EXPORT"
    flat.mkdir()
    for n, i in enumerate(order):
        os.replace(files[i], flat / f"IMG{n + 1:05d}")
    for folder in study_dir.iterdir():
        if folder != flat:
            folder.rmdir()


def _z_bounds(grids: Sequence[Grid]) -> tuple[float, float]:
    """z range (mm) inside every grid."""
    lows = [g.origin[2] for g in grids]
    highs = [g.origin[2] + (g.shape[0] - 1) * g.spacing[2] for g in grids]
    return max(lows), min(highs)


def _write_nifti(path: Path, array: np.ndarray, grid: Grid) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(grid.origin)
    image.SetSpacing(grid.spacing)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@dataclass
class Scene:
    """One subject before any image is formed: who, when, what series, which lesions.

    ``rng`` is the subject's stream, positioned where image formation (noise) goes on drawing.
    """

    rng: np.random.Generator
    clinical: dict[str, Any]
    body: anatomy.Body
    weight: float
    with_t1c: bool
    times: dict[str, dt.datetime]
    acqs: list[Acquisition]
    lesions: list[Lesion]
    tissues: dict[str, dict[str, float]]
    study: Study


def build_scene(plan: SubjectPlan, *, seed: int, size: str, priors: Priors) -> Scene:
    """The deterministic scene of ``plan``'s subject (as generate_subject draws it)."""
    rng = np.random.default_rng([seed, 1, plan.index])
    spec = priors["entities"][plan.subtype]
    clinical = _clinical(spec, priors, rng)
    body = anatomy.sample_body(priors, rng)
    weight = round(draw(priors["body"]["weight_kg"], rng), 1)
    height = round(draw(priors["body"]["height_m"], rng), 2)
    times = _times(priors, rng)
    dose = round(draw(priors["pet"]["dose_mbq"], rng), 1) * 1e6
    half_life = float(priors["pet"]["half_life_s"])
    elapsed = (times["pet"] - times["injection"]).total_seconds()
    bqml_per_suv = dose * 2.0 ** (-elapsed / half_life) / (weight * 1000.0)
    # gadolinium is withheld in ESKD (seed case); otherwise given to most, so t1c is often missing
    contrast = priors["contrast"]
    p_t1c = contrast["p_if_eskd"] if clinical["eskd"] else contrast["p_if_renal_function_ok"]
    with_t1c = chance(p_t1c, np.random.default_rng([seed, 2, plan.index]))
    acqs = acquisitions(
        priors=priors,
        size=size,
        site=plan.site,
        rng=rng,
        centre=VOLUME_CENTRE,
        bqml_per_suv=bqml_per_suv,
        t1c=with_t1c,
    )
    sizes = priors["sizes"][size]
    lesions, _ = build_lesions(
        subtype=plan.subtype,
        spec=spec,
        body=body,
        rng=rng,
        limits={k: sizes[k] for k in ("max_lesion_diam_mm", "max_lobules")},
        z_bounds=_z_bounds([a.grid for a in acqs]),
    )
    tissues = {
        name: {key: draw(value, rng) for key, value in props.items()}
        for name, props in priors["background"].items()
    }
    uid_seed = f"calcirad-phantom:{seed}:{plan.subject}"
    study = Study(
        uid_seed=uid_seed,
        study_uid=uid(uid_seed, "study"),
        frame_uid=uid(uid_seed, "frame"),
        start=times["ct"],
        identity=make_identity(
            sex=clinical["sex"], age_years=clinical["age"], study_date=times["ct"].date(), rng=rng
        ),
        weight_kg=weight,
        height_m=height,
        site=priors["sites"][plan.site],
        injection=times["injection"],
        pet_start=times["pet"],
        dose_bq=dose,
        half_life_s=half_life,
    )
    return Scene(
        rng=rng,
        clinical=clinical,
        body=body,
        weight=weight,
        with_t1c=with_t1c,
        times=times,
        acqs=acqs,
        lesions=lesions,
        tissues=tissues,
        study=study,
    )


def render_truth(scene: Scene, grid: Grid) -> np.ndarray:
    """The lesion label map (z, y, x; 0 outside, lesion index inside) of ``scene`` on ``grid``."""
    _, truth, _ = render(
        grid=grid, body=scene.body, tissues=scene.tissues, lesions=scene.lesions, key="ct"
    )
    return truth


def generate_subject(
    plan: SubjectPlan,
    *,
    seed: int,
    out: Path,
    size: str,
    priors: Priors,
    messy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Simulate and write one subject; return its truth row. ``messy``: see resolve_messy."""
    scene = build_scene(plan, seed=seed, size=size, priors=priors)
    rng, clinical, body, times = scene.rng, scene.clinical, scene.body, scene.times
    acqs, lesions, tissues, study = scene.acqs, scene.lesions, scene.tissues, scene.study
    dicom_tmp = out / "dicom" / f".{plan.subject}.partial"
    truth_tmp = out / "truth" / f".{plan.subject}.partial"
    for tmp in (dicom_tmp, truth_tmp):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    row: dict[str, Any] = {}
    export = plan_export(messy, seed=seed, index=plan.index)
    syntax = (
        getattr(pydicom.uid, export.syntax) if export.syntax else pydicom.uid.ExplicitVRLittleEndian
    )
    for acq in acqs:
        values, truth, bone = render(
            grid=acq.grid, body=body, tissues=tissues, lesions=lesions, key=acq.key
        )
        image = form_image(values, acq, rng)
        stored, slopes, intercept = encode(image, acq)
        when = times[acq.name]
        write_series(
            folder=dicom_tmp,
            study=study,
            acq=acq,
            when=when,
            stored=stored,
            slopes=slopes,
            intercept=intercept,
            transfer_syntax=syntax,
        )
        if acq.modality == "CT" and export.scout:
            scout, pixels = localizer(acq, values)
            write_series(
                folder=dicom_tmp,
                study=study,
                acq=scout,
                when=when - dt.timedelta(minutes=1),
                stored=pixels,
                slopes=[1.0],
                intercept=0.0,
                transfer_syntax=syntax,
            )
        if acq.modality == "CT":
            _write_nifti(truth_tmp / "lesion.nii.gz", truth.astype(np.uint8), acq.grid)
            _write_nifti(truth_tmp / "bone.nii.gz", bone.astype(np.uint8), acq.grid)
            voxel_ml = float(np.prod(acq.grid.spacing)) / 1000.0
            row["lesion_volume_ml"] = round(float((truth > 0).sum()) * voxel_ml, 2)
            row["ct_mean_hu_true"] = (
                round(float(values[truth > 0].mean()), 1) if truth.any() else ""
            )
        if acq.modality == "PT":
            suv = ideal_image(values, acq)
            near = ndimage.binary_dilation(truth > 0, iterations=1)
            row["suvmax_true"] = round(float(suv[near].max()), 3) if near.any() else ""
    summary = {
        "subject": plan.subject,
        "subtype": plan.subtype,
        "lesions": [lesion.summary() for lesion in lesions],
    }
    (truth_tmp / "lesions.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    missing = _drop_slice(dicom_tmp, export) if export.missing_series is not None else None
    if export.mixed_folder:
        _flatten(dicom_tmp, seed=seed, index=plan.index)
    _replace_dir(dicom_tmp, out / "dicom" / plan.subject)
    _replace_dir(truth_tmp, out / "truth" / plan.subject)
    return {
        "subject": plan.subject,
        "label": plan.label,
        "subtype": plan.subtype,
        "site": plan.site,
        "n_lesions": len(lesions),
        "weight_kg": scene.weight,
        "t1c": int(scene.with_t1c),
        "export": export.notes(missing),
        **clinical,
        **row,
    }


def _tsv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["\t".join(columns)]
    lines += ["\t".join(str(r[c]) for c in columns) for r in rows]
    return "\n".join(lines) + "\n"


def write_cohort(
    *,
    n: int = 36,
    seed: int = 0,
    out: str | os.PathLike[str],
    size: str = "demo",
    jobs: int = 1,
    subtypes: SubtypeSpec = None,
    priors_path: str | os.PathLike[str] | None = None,
    messy: MessySpec = None,
) -> Path:
    """Write a synthetic multi-modal DICOM cohort of ``n`` subjects under ``out``; return ``out``.

    ``subtypes``: None (the priors' mix), a list of subtype names (equal weights) or a mapping
    subtype -> weight. ``priors_path`` replaces the packaged priors.yaml. ``messy`` writes
    PACS-like exports (see resolve_messy; default: the priors' ``messy.enabled``, off). Same
    arguments give byte-identical files.
    """
    if n < 1:
        raise ConfigError("n must be at least 1")
    priors = load_priors(priors_path)
    if size not in priors["sizes"]:
        raise ConfigError(f"unknown size {size!r}; choose from {sorted(priors['sizes'])}")
    out = Path(out)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(n=n, seed=seed, priors=priors, subtypes=subtypes)
    kwargs = {
        "seed": seed,
        "out": out,
        "size": size,
        "priors": priors,
        "messy": resolve_messy(priors, messy),
    }
    if jobs <= 1:
        rows = [generate_subject(p, **kwargs) for p in plans]
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(generate_subject, p, **kwargs) for p in plans]
            rows = [f.result() for f in futures]
    rows.sort(key=lambda r: r["subject"])
    samples = [{**r, "dicom": f"dicom/{r['subject']}"} for r in rows]
    write_text(out / "samples.tsv", _tsv(samples, SAMPLE_COLUMNS))
    write_text(out / "truth" / "labels.tsv", _tsv(rows, TRUTH_COLUMNS))
    return out
