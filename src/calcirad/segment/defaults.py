"""Defaults shared by segmentation and feature extraction, importable without SciPy."""

DEFAULT_CALCIFICATION_HU = 150.0
"""Calcification threshold (HU). Above muscle + 5 noise SD (~50 + 5 x 20), below gout tophi and
sediment layers (120-800 HU), so dense and faint calcific matrix both seed the lesion."""
