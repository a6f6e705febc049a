"""Fake but identifying-looking patient identities, deterministic from the subject's generator.

These values stand in for real PHI so a privacy test can check that none of them reaches results.
They never contain the subject ID (PatientID is a 7-digit MRN, names have no digits).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

SURNAMES = (
    "Moreau Lefebvre Garnier Rousseau Fontaine Chevalier Lambert Girard Bonnet Mercier Dupuis "
    "Marchand Perrin Lemoine Faure Andre Roussel Gauthier Brunet Renaud Schmitt Colin Vidal "
    "Okafor Haddad Benali Nguyen Rossi Fischer Jansen Kowalski Silva Ibrahim Mensah Costa Weber"
).split()
FEMALE = "Claire Sophie Camille Amelie Ines Lea Manon Chloe Nadia Yasmine Aicha Elena Marta Julia".split()
MALE = "Julien Thomas Antoine Hugo Karim Mehdi Lucas Pierre Nicolas Samuel Omar Kwame Marco Jan".split()
PHYSICIANS = ("Dr^Fabre^Helene", "Dr^Aubert^Marc", "Dr^Caron^Sylvie", "Dr^Lemaire^Paul",
              "Dr^Barbier^Anne", "Dr^Noel^Francois")  # fmt: skip


@dataclass(frozen=True)
class Identity:
    """Patient-level DICOM identity (strings already in DICOM formats: PN, DA, AS)."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    accession: str
    referring: str


def make_identity(
    *, sex: str, age_years: int, study_date: dt.date, rng: np.random.Generator
) -> Identity:
    """An identity for a patient of ``sex`` (M/F) aged ``age_years`` on ``study_date``."""
    given = MALE if sex == "M" else FEMALE
    name = f"{SURNAMES[int(rng.integers(len(SURNAMES)))]}^{given[int(rng.integers(len(given)))]}"
    # age in whole years on the study date: born between age+1 and age years earlier
    days = int(365.25 * age_years) + int(rng.integers(1, 364))
    birth = study_date - dt.timedelta(days=days)
    return Identity(
        name=name,
        patient_id=f"{int(rng.integers(1_000_000, 10_000_000))}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=sex,
        age=f"{age_years:03d}Y",
        accession=f"RX{int(rng.integers(10_000_000, 100_000_000))}",
        referring=PHYSICIANS[int(rng.integers(len(PHYSICIANS)))],
    )
