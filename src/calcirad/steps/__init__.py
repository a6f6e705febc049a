"""Subject- and cohort-level steps called by the workflow's thin scripts.

Each step takes plain paths and plain config slices (no Snakemake objects), calls the stage
modules, records per-subject failures as data (``status`` JSON) instead of crashing the run, and
writes every file atomically.
"""
