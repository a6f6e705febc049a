"""PET standardised uptake value (SUV) scale factors, following the QIBA vendor-neutral pseudo-code.

Convention: ``SUV = rescaled_value * factor`` where ``rescaled_value`` is the stored pixel value after
that image's own ``RescaleSlope``/``RescaleIntercept`` (PET carries one slope per slice), expressed in
the header's ``Units``:

- ``BQML`` (Bq/ml): ``factor = normaliser / decayed_dose``; the normaliser is body weight in g (SUVbw,
  g/ml), lean body mass in g (SUVlbm) or body surface area in cm^2 (SUVbsa, cm^2/ml), and
  ``decayed_dose`` is the injected activity (Bq) decayed to the time the image values refer to.
- ``CNTS`` (Philips): ``factor`` = the Philips SUV scale factor (7053,1000) when present, otherwise the
  activity-concentration factor (7053,1009) (CNTS -> Bq/ml) times the BQML factor.
- ``GML`` (already SUVbw, g/ml): ``factor`` = 1 for SUVbw (the image is not scaled twice).
For ``lbm``, ``lbm_janma`` and ``bsa`` on CNTS/GML images the SUVbw factor is multiplied by
``normaliser / body weight``.

Reference time of the image values, by ``DecayCorrection`` (0054,1102):

- ``START``: images are decay corrected to the series start. The series start is SeriesDate/Time
  unless SeriesDate/Time is *later* than the earliest AcquisitionDate/Time: then the series has been
  re-processed (SeriesTime is the reconstruction time, not the scan time), so QIBA takes GE's private
  scan date/time (0009,100D) if present, else the earliest AcquisitionDate/Time of the series.
- ``ADMIN``: images are decay corrected to the administration time, so the dose is not decayed.
- ``NONE``: image values are activity measured during each frame, so the dose is decayed to each
  image's own AcquisitionDate/Time and averaged over its ActualFrameDuration (one factor per image).

Injection time: RadiopharmaceuticalStartDateTime if present; otherwise RadiopharmaceuticalStartTime on
SeriesDate, moved to the previous day when that would put it after the scan (injection before
midnight, scan after midnight).

Anything missing or implausible raises :class:`~calcirad.errors.SubjectInputError` rather than giving
a wrong SUV. The one repair made is a dose recorded in MBq instead of Bq (a value below 10^4), which is
converted and reported in :attr:`SUVResult.notes`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .errors import SubjectInputError

STAGE = "suv"
METHODS = ("bw", "lbm", "lbm_janma", "bsa")

# Philips and GE private elements used by QIBA: (group, private creator, element offset).
PHILIPS_SUV_SCALE = (0x7053, "Philips PET Private Group", 0x00)  # (7053,1000)
PHILIPS_ACTIVITY_SCALE = (0x7053, "Philips PET Private Group", 0x09)  # (7053,1009)
GE_SCAN_DATETIME = (0x0009, "GEMS_PETD_01", 0x0D)  # (0009,100D)

# Plausibility bounds: outside them the header is wrong, and a SUV computed from it would be too.
DOSE_MBQ_BELOW_BQ = 1e4  # a "dose" under 10 kBq is a dose written in MBq
DOSE_RANGE_BQ = (1e6, 3e10)  # 1 MBq .. 30 GBq
WEIGHT_RANGE_KG = (1.0, 400.0)
HEIGHT_RANGE_M = (0.3, 2.6)
MAX_HALF_LIVES_ELAPSED = 10.0


@dataclass(frozen=True)
class SUVResult:
    """SUV scale factors of one PET series, one per dataset in input order, and how they were found."""

    factors: tuple[float, ...]
    method: str
    units: str
    decay_correction: str
    reference_time_rule: str
    injection_time: str | None = None
    reference_time: str | None = None
    decay_time_s: float | None = None
    weight_kg: float | None = None
    dose_bq: float | None = None
    half_life_s: float | None = None
    radionuclide: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def uniform(self) -> bool:
        """True when every image shares one factor (relative spread below 1e-12)."""
        lo, hi = min(self.factors), max(self.factors)
        return hi - lo <= 1e-12 * abs(hi)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (no patient identifiers: weight and dose are not identifying)."""
        out = asdict(self)
        out["factors"] = list(self.factors)
        out["notes"] = list(self.notes)
        return out


@dataclass(frozen=True)
class _Context:
    """Where an error happened, so every message names subject and series."""

    subject: str | None
    series: str | None

    def fail(self, reason: str, hint: str) -> SubjectInputError:
        return SubjectInputError(
            reason, subject=self.subject, stage=STAGE, series=self.series, hint=hint
        )


# --------------------------------------------------------------------------------------------
# DICOM date/time parsing (DA, TM, DT as strings; pydicom leaves them as str by default)
# --------------------------------------------------------------------------------------------


def parse_da(value: object) -> dt.date | None:
    """DICOM DA ``YYYYMMDD`` (also the old ``YYYY.MM.DD``) -> date, or None when empty."""
    text = str(value or "").strip().replace(".", "").replace("-", "")
    if not text:
        return None
    return dt.datetime.strptime(text[:8], "%Y%m%d").date()


def parse_tm(value: object) -> dt.time | None:
    """DICOM TM ``HH[MM[SS[.ffffff]]]`` (also the old ``HH:MM:SS``) -> time, or None when empty."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    whole, _, frac = text.partition(".")
    whole = whole.ljust(6, "0")
    micro = int((frac + "000000")[:6]) if frac else 0
    return dt.time(int(whole[0:2]), int(whole[2:4]), int(whole[4:6]), micro)


def parse_dt(value: object) -> dt.datetime | None:
    """DICOM DT ``YYYYMMDDHHMMSS.ffffff[&ZZXX]`` -> naive local datetime, or None when empty.

    A UTC offset suffix is dropped: every other PET time attribute is local time without offset,
    so keeping it would shift one time against the others.
    """
    text = re.split(r"[+-]", str(value or "").strip(), maxsplit=1)[0]
    if not text:
        return None
    date = parse_da(text[:8])
    time = parse_tm(text[8:] or "0")
    return dt.datetime.combine(date, time)


def _combine(date_value: object, time_value: object) -> dt.datetime | None:
    date, time = parse_da(date_value), parse_tm(time_value)
    if date is None or time is None:
        return None
    return dt.datetime.combine(date, time)


# --------------------------------------------------------------------------------------------
# Header access
# --------------------------------------------------------------------------------------------


def _number(value: object) -> float | None:
    """A DS/IS/FD value, or the bytes of an element read as UN, as float (None when empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, bytes | bytearray):
        text = value.decode("ascii", errors="ignore").strip("\x00 ")
        try:
            return float(text)
        except ValueError:
            return struct.unpack("<d", value[:8])[0] if len(value) >= 8 else None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return _number(value[0]) if len(value) else None
    return float(value)


def private_value(ds: Dataset, key: tuple[int, str, int]) -> object | None:
    """Value of a private element given (group, creator, offset), or None.

    Found through its private creator, so it works whatever block the vendor used; when the file has
    no creator element at all for the group (some exports strip it) the element at ``gggg,10xx`` is
    read directly, as QIBA's fixed tag numbers assume.
    """
    group, creator, offset = key
    try:
        return ds.private_block(group, creator)[offset].value
    except KeyError:
        pass
    has_creators = any(
        (group, element) in ds
        for element in range(0x10, 0x100)  # private creator slots gggg,0010..00FF
    )
    if not has_creators and (group, 0x1000 + offset) in ds:
        return ds[group, 0x1000 + offset].value
    return None


def multi_value(value: object) -> list[str]:
    """A CS value that may be single (a str) or multiple (a MultiValue) -> list of stripped str."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split("\\")]
    return [str(part).strip() for part in value]


def _radiopharm(ds: Dataset) -> Dataset:
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    return seq[0] if seq else Dataset()


def _radionuclide_name(info: Dataset) -> str | None:
    codes = info.get("RadionuclideCodeSequence")
    if codes:
        return str(codes[0].get("CodeMeaning", "")) or None
    return str(info.get("Radiopharmaceutical", "")) or None


def _str(ds: Dataset, keyword: str) -> str:
    return str(ds.get(keyword, "") or "").strip().upper()


def _same_everywhere(datasets: Sequence[Dataset], getter, what: str, ctx: _Context) -> object:
    """The series-level value ``getter(ds)``; error if the images of one series disagree."""
    values = {repr(getter(ds)) for ds in datasets}
    if len(values) > 1:
        raise ctx.fail(
            f"{what} differs between images of one PET series: {sorted(values)}",
            "check that the folder holds one series only, or pin the series in the sample sheet",
        )
    return getter(datasets[0])


# --------------------------------------------------------------------------------------------
# Patient size normalisers
# --------------------------------------------------------------------------------------------


def _weight_kg(ds: Dataset, ctx: _Context) -> float:
    weight = _number(ds.get("PatientWeight"))
    if not weight:
        raise ctx.fail(
            "PatientWeight (0010,1030) is missing or zero: SUV needs the body weight",
            "add the weight (kg) to the PET DICOM header, or exclude PET for this subject",
        )
    lo, hi = WEIGHT_RANGE_KG
    if not lo <= weight <= hi:
        raise ctx.fail(
            f"PatientWeight {weight:g} kg is implausible (expected {lo:g}-{hi:g} kg; grams or pounds?)",
            "correct PatientWeight (kg) in the PET header",
        )
    return weight


def _height_m(ds: Dataset, ctx: _Context) -> float:
    height = _number(ds.get("PatientSize"))
    if not height:
        raise ctx.fail(
            "PatientSize (0010,1020) is missing: SUVlbm/SUVbsa need the height",
            "add the height (m) to the PET header or use conversion.suv: bw",
        )
    lo, hi = HEIGHT_RANGE_M
    if not lo <= height <= hi:
        raise ctx.fail(
            f"PatientSize {height:g} m is implausible (expected {lo:g}-{hi:g} m; centimetres?)",
            "correct PatientSize (m) in the PET header",
        )
    return height


def _sex(ds: Dataset, ctx: _Context) -> str:
    sex = _str(ds, "PatientSex")
    if sex not in ("M", "F"):
        raise ctx.fail(
            f"PatientSex is {sex or 'missing'!r}: lean body mass formulas need M or F",
            "set PatientSex or use conversion.suv: bw or bsa",
        )
    return sex


def lbm_james_kg(*, weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg), James 1976: M 1.10 W - 128 (W/H)^2, F 1.07 W - 148 (W/H)^2, H in cm."""
    ratio = weight_kg / (height_m * 100.0)
    if sex == "M":
        return 1.10 * weight_kg - 128.0 * ratio**2
    return 1.07 * weight_kg - 148.0 * ratio**2


def lbm_janmahasatian_kg(*, weight_kg: float, height_m: float, sex: str) -> float:
    """Lean body mass (kg), Janmahasatian 2005: M 9270 W/(6680 + 216 BMI), F 9270 W/(8780 + 244 BMI)."""
    bmi = weight_kg / height_m**2
    if sex == "M":
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)


def bsa_dubois_m2(*, weight_kg: float, height_m: float) -> float:
    """Body surface area (m^2), Du Bois 1916: 0.007184 W^0.425 H^0.725 (W kg, H cm)."""
    return 0.007184 * weight_kg**0.425 * (height_m * 100.0) ** 0.725


def normaliser(ds: Dataset, *, method: str, ctx: _Context) -> float:
    """The SUV normaliser: g of body weight or lean body mass (bw, lbm, lbm_janma), cm^2 (bsa)."""
    weight = _weight_kg(ds, ctx)
    if method == "bw":
        return weight * 1000.0
    height = _height_m(ds, ctx)
    if method == "bsa":
        return bsa_dubois_m2(weight_kg=weight, height_m=height) * 1e4
    formula = lbm_james_kg if method == "lbm" else lbm_janmahasatian_kg
    lbm = formula(weight_kg=weight, height_m=height, sex=_sex(ds, ctx))
    if not 0 < lbm <= weight:
        # James' formula turns over for high BMI; a negative or > weight LBM is not a mass.
        raise ctx.fail(
            f"{method} lean body mass {lbm:.1f} kg is implausible for {weight:g} kg, {height:g} m",
            "use conversion.suv: lbm_janma (valid at high BMI) or bw",
        )
    return lbm * 1000.0


# --------------------------------------------------------------------------------------------
# Dose and times
# --------------------------------------------------------------------------------------------


def _dose_bq(info: Dataset, ctx: _Context) -> tuple[float, list[str]]:
    dose = _number(info.get("RadionuclideTotalDose"))
    if not dose or dose <= 0:
        raise ctx.fail(
            f"RadionuclideTotalDose (0018,1074) is {dose!r}: SUV needs the injected activity",
            "add the injected activity (Bq) to the PET header, or exclude PET for this subject",
        )
    notes = []
    if dose < DOSE_MBQ_BELOW_BQ:
        # Some sites type the activity in MBq; 370 Bq would be a million times below any PET dose.
        notes.append(f"RadionuclideTotalDose {dose:g} read as MBq (Bq expected): {dose * 1e6:g} Bq")
        dose *= 1e6
    lo, hi = DOSE_RANGE_BQ
    if not lo <= dose <= hi:
        raise ctx.fail(
            f"RadionuclideTotalDose {dose:g} Bq is implausible (expected {lo:g}-{hi:g} Bq)",
            "check the injected activity in the PET header (Bq)",
        )
    return dose, notes


def _half_life_s(info: Dataset, ctx: _Context) -> float:
    half_life = _number(info.get("RadionuclideHalfLife"))
    if not half_life or half_life <= 0:
        raise ctx.fail(
            "RadionuclideHalfLife (0018,1075) is missing or zero",
            "add the tracer's half-life (s) to the PET header",
        )
    return half_life


def _acquisition_datetimes(datasets: Sequence[Dataset]) -> list[dt.datetime | None]:
    out = []
    for ds in datasets:
        when = _combine(ds.get("AcquisitionDate"), ds.get("AcquisitionTime"))
        out.append(when or parse_dt(ds.get("AcquisitionDateTime")))
    return out


def series_start(datasets: Sequence[Dataset], ctx: _Context) -> tuple[dt.datetime, str]:
    """Series reference (scan start) time for DecayCorrection START, and the rule that gave it."""
    first = datasets[0]
    series_dt = _combine(first.get("SeriesDate"), first.get("SeriesTime"))
    acquired = [when for when in _acquisition_datetimes(datasets) if when is not None]
    earliest = min(acquired) if acquired else None
    if series_dt is not None and (earliest is None or series_dt <= earliest):
        return series_dt, "SeriesDate/Time (not later than the earliest AcquisitionDate/Time)"
    if series_dt is None and earliest is None:
        raise ctx.fail(
            "neither SeriesDate/Time nor AcquisitionDate/Time is present: no scan time",
            "the PET header must give when the scan started",
        )
    ge_scan = parse_dt(private_value(first, GE_SCAN_DATETIME))
    if series_dt is not None and ge_scan is not None:
        return ge_scan, "GE private scan date/time (0009,100D): SeriesTime is after acquisition"
    if series_dt is None:
        return earliest, "earliest AcquisitionDate/Time (no SeriesDate/Time)"
    return earliest, (
        "earliest AcquisitionDate/Time: SeriesDate/Time is later (re-processed series, QIBA)"
    )


def injection_time(
    datasets: Sequence[Dataset], *, scan_start: dt.datetime, ctx: _Context
) -> tuple[dt.datetime, str | None]:
    """Injection date/time, and a note when the date had to be inferred across midnight."""
    info = _radiopharm(datasets[0])
    full = parse_dt(info.get("RadiopharmaceuticalStartDateTime"))
    if full is not None:
        return full, None
    time = parse_tm(info.get("RadiopharmaceuticalStartTime"))
    if time is None:
        raise ctx.fail(
            "neither RadiopharmaceuticalStartDateTime (0018,1078) nor "
            "RadiopharmaceuticalStartTime (0018,1072) is present: no injection time",
            "add the injection time to the PET header, or exclude PET for this subject",
        )
    date = parse_da(datasets[0].get("SeriesDate")) or scan_start.date()
    injected = dt.datetime.combine(date, time)
    if injected > scan_start and injected - dt.timedelta(days=1) <= scan_start:
        # Only a time of day is known; later than the scan means injected the evening before.
        return injected - dt.timedelta(
            days=1
        ), "injection before midnight: date set to the day before"
    return injected, None


def _check_decay_time(seconds: float, *, half_life: float, ctx: _Context) -> None:
    if seconds < 0:
        raise ctx.fail(
            f"injection is {-seconds:.0f} s after the image reference time (injection after acquisition)",
            "check RadiopharmaceuticalStartDateTime/Time and SeriesDate/Time in the PET header",
        )
    if seconds > MAX_HALF_LIVES_ELAPSED * half_life:
        raise ctx.fail(
            f"{seconds / 3600:.1f} h between injection and scan is over "
            f"{MAX_HALF_LIVES_ELAPSED:g} half-lives ({half_life:g} s): wrong date or tracer?",
            "check the injection and series dates/times and RadionuclideHalfLife",
        )


def _mean_decay_over_frame(duration_s: float, half_life_s: float) -> float:
    """Mean of 2^(-t/T) over a frame of ``duration_s`` starting at t = 0 (1 for zero duration)."""
    lam_t = math.log(2.0) / half_life_s * duration_s
    return 1.0 if lam_t <= 0 else (1.0 - math.exp(-lam_t)) / lam_t


# --------------------------------------------------------------------------------------------
# Factors per Units
# --------------------------------------------------------------------------------------------


def _check_corrections(ds: Dataset, decay_correction: str, ctx: _Context) -> None:
    corrected = {v.upper() for v in multi_value(ds.get("CorrectedImage"))}
    if not corrected:
        return  # not always written; the Units check still applies
    if "ATTN" not in corrected:
        raise ctx.fail(
            f"PET is not attenuation corrected (CorrectedImage {sorted(corrected)}): no SUV",
            "pin the attenuation-corrected PET series in the sample sheet",
        )
    if decay_correction in ("START", "ADMIN") and not corrected & {"DECY", "DECAY"}:
        raise ctx.fail(
            f"DecayCorrection is {decay_correction} but CorrectedImage lacks DECY",
            "the header contradicts itself; check the series with the site",
        )


def _bqml_factors(
    datasets: Sequence[Dataset], *, norm: float, decay_correction: str, ctx: _Context
) -> dict:
    """Per-image factors for Bq/ml images, with the timing record."""
    info = _radiopharm(datasets[0])
    dose, notes = _dose_bq(info, ctx)
    half_life = _half_life_s(info, ctx)
    start, rule = series_start(datasets, ctx)
    injected, note = injection_time(datasets, scan_start=start, ctx=ctx)
    notes += [note] if note else []
    record = {
        "dose_bq": dose,
        "half_life_s": half_life,
        "injection_time": injected.isoformat(),
        "radionuclide": _radionuclide_name(info),
    }
    if decay_correction == "ADMIN":
        _check_decay_time((start - injected).total_seconds(), half_life=half_life, ctx=ctx)
        factors = [norm / dose] * len(datasets)
        return record | {
            "factors": factors,
            "reference_time_rule": "injection time (DecayCorrection ADMIN: dose not decayed)",
            "reference_time": injected.isoformat(),
            "decay_time_s": 0.0,
            "notes": notes,
        }
    if decay_correction == "START":
        decay = (start - injected).total_seconds()
        _check_decay_time(decay, half_life=half_life, ctx=ctx)
        factor = norm / (dose * 2.0 ** (-decay / half_life))
        return record | {
            "factors": [factor] * len(datasets),
            "reference_time_rule": rule,
            "reference_time": start.isoformat(),
            "decay_time_s": decay,
            "notes": notes,
        }
    # NONE: each image holds the activity measured during its own frame.
    factors, decays = [], []
    for ds, acquired in zip(datasets, _acquisition_datetimes(datasets), strict=True):
        when = acquired or start
        decay = (when - injected).total_seconds()
        _check_decay_time(decay, half_life=half_life, ctx=ctx)
        duration = (_number(ds.get("ActualFrameDuration")) or 0.0) / 1000.0
        mean_dose = dose * 2.0 ** (-decay / half_life) * _mean_decay_over_frame(duration, half_life)
        factors.append(norm / mean_dose)
        decays.append(decay)
    return record | {
        "factors": factors,
        "reference_time_rule": "each image's AcquisitionDate/Time, dose averaged over "
        "ActualFrameDuration (DecayCorrection NONE)",
        "reference_time": start.isoformat(),
        "decay_time_s": min(decays),
        "notes": notes,
    }


def _philips_factors(
    datasets: Sequence[Dataset], *, norm: float, decay_correction: str, ctx: _Context
) -> dict:
    """CNTS images: Philips SUV factor (7053,1000), else (7053,1009) x the Bq/ml factor."""
    suv_scale = [_number(private_value(ds, PHILIPS_SUV_SCALE)) for ds in datasets]
    if all(suv_scale):
        return {
            "factors": suv_scale,
            "reference_time_rule": "Philips SUV scale factor (7053,1000) (Units CNTS)",
            "notes": [],
        }
    activity = [_number(private_value(ds, PHILIPS_ACTIVITY_SCALE)) for ds in datasets]
    if not all(activity):
        raise ctx.fail(
            "Units are CNTS but neither the Philips SUV scale factor (7053,1000) nor the activity "
            "concentration factor (7053,1009) is present: counts cannot be turned into SUV",
            "export the PET from the scanner in Bq/ml (BQML) or keep the Philips private tags",
        )
    record = _bqml_factors(datasets, norm=norm, decay_correction=decay_correction, ctx=ctx)
    record["factors"] = [a * f for a, f in zip(activity, record["factors"], strict=True)]
    record["reference_time_rule"] += "; x Philips activity concentration factor (7053,1009)"
    return record


def suv_scale_factors(
    datasets: Dataset | Iterable[Dataset],
    *,
    method: str = "bw",
    subject: str | None = None,
    series: str | None = None,
) -> SUVResult:
    """SUV factors for the images of one PET series (one per dataset, input order), with provenance.

    ``method``: ``bw`` (g/ml), ``lbm`` (James, g/ml), ``lbm_janma`` (Janmahasatian, g/ml) or ``bsa``
    (Du Bois, cm^2/ml). ``subject``/``series`` only name the failure in error messages.
    """
    datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    ctx = _Context(subject, series)
    if method not in METHODS:
        raise ValueError(f"unknown SUV method {method!r}; expected one of {METHODS}")
    if not datasets:
        raise ctx.fail("no PET images given", "check the series selection")
    first = datasets[0]
    units = _same_everywhere(datasets, lambda ds: _str(ds, "Units"), "Units", ctx)
    decay_correction = _same_everywhere(
        datasets, lambda ds: _str(ds, "DecayCorrection"), "DecayCorrection", ctx
    )
    for keyword in ("PatientWeight", "PatientSize", "PatientSex"):
        _same_everywhere(datasets, lambda ds, k=keyword: ds.get(k), keyword, ctx)
    _same_everywhere(
        datasets, lambda ds: repr(_radiopharm(ds)), "RadiopharmaceuticalInformationSequence", ctx
    )
    if units in ("BQML", "CNTS") and decay_correction not in ("START", "ADMIN", "NONE"):
        raise ctx.fail(
            f"DecayCorrection (0054,1102) is {decay_correction or 'missing'!r}; "
            "expected START, ADMIN or NONE",
            "the PET header must say to which time the images are decay corrected",
        )
    _check_corrections(first, decay_correction, ctx)
    weight_g = _weight_kg(first, ctx) * 1000.0
    norm = normaliser(first, method=method, ctx=ctx)
    if units == "BQML":
        record = _bqml_factors(datasets, norm=norm, decay_correction=decay_correction, ctx=ctx)
    elif units == "CNTS":
        record = _philips_factors(
            datasets, norm=weight_g, decay_correction=decay_correction, ctx=ctx
        )
        record["factors"] = [f * norm / weight_g for f in record["factors"]]
    elif units == "GML":
        # Already SUVbw (g/ml): the body-weight factor is 1, never a second scaling.
        record = {
            "factors": [norm / weight_g] * len(datasets),
            "reference_time_rule": "none: Units GML (image already in SUVbw)",
            "notes": [],
        }
    else:
        raise ctx.fail(
            f"PET Units (0054,1001) {units or 'missing'!r} cannot be converted to SUV "
            "(supported: BQML, CNTS with Philips factors, GML)",
            "export the PET in Bq/ml (BQML), or exclude PET for this subject",
        )
    factors = tuple(float(f) for f in record.pop("factors"))
    if not all(math.isfinite(f) and f > 0 for f in factors):
        raise ctx.fail(
            f"SUV factor is not a positive number: {factors[:3]}", "check the PET header"
        )
    notes = tuple(record.pop("notes"))
    return SUVResult(
        factors=factors,
        method=method,
        units=units,
        decay_correction=decay_correction,
        weight_kg=weight_g / 1000.0,
        notes=notes,
        **record,
    )


def suv_scale_factor(
    datasets: Dataset | Iterable[Dataset],
    *,
    method: str = "bw",
    subject: str | None = None,
    series: str | None = None,
) -> float:
    """The single SUV factor of a PET series: ``SUV = value in the header's Units * factor``.

    Raises SubjectInputError when the images need different factors (DecayCorrection NONE with
    frames acquired at different times): use :func:`suv_scale_factors` per image then.
    """
    result = suv_scale_factors(datasets, method=method, subject=subject, series=series)
    if not result.uniform:
        raise _Context(subject, series).fail(
            "the images of this PET series need different SUV factors "
            f"({min(result.factors):.6g}..{max(result.factors):.6g}; DecayCorrection "
            f"{result.decay_correction})",
            "scale each image with calcirad.suv.suv_scale_factors",
        )
    return result.factors[0]


def rescaled_pixels(ds: Dataset) -> np.ndarray:
    """Stored pixels of one classic image -> float64 in the header's units (slope/intercept applied)."""
    slope = _number(ds.get("RescaleSlope"))
    intercept = _number(ds.get("RescaleIntercept"))
    pixels = ds.pixel_array.astype(np.float64)
    return pixels * (1.0 if slope is None else slope) + (intercept or 0.0)


def suv_pixels(ds: Dataset, factor: float) -> np.ndarray:
    """One PET image in SUV: its own RescaleSlope/Intercept, then the series factor."""
    return rescaled_pixels(ds) * factor
