"""Synthetic multi-modal DICOM cohort (CT, MR T1/T2, FDG-PET) of TC, calcifying sarcomas and mimics.

Public API: ``write_cohort``. All appearance, clinical and acquisition parameters live in
``priors.yaml`` beside this file.
"""

from calcirad.phantom.cohort import plan_cohort, write_cohort
from calcirad.phantom.priors import load_priors

__all__ = ["load_priors", "plan_cohort", "write_cohort"]
