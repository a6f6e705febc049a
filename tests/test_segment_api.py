"""The segmentation package's public names, and what an extraction job has to import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import calcirad.segment as segment


@pytest.mark.parametrize("name", segment.__all__)
def test_every_public_name_resolves_to_its_module_object(name):
    module = importlib.import_module(f"calcirad.segment.{segment._EXPORTS[name]}")
    assert getattr(segment, name) is getattr(module, name)


def test_public_names_and_lazy_table_agree():
    assert sorted(segment.__all__) == sorted(segment._EXPORTS)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        segment.not_a_name  # noqa: B018


def test_feature_extraction_job_imports_no_heavy_modules():
    """One extraction job per subject and modality: its imports are paid per job (issue 10)."""
    code = (
        "import sys, calcirad.steps.features;"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(subprocess.check_output([sys.executable, "-c", code], text=True).split())
    assert "calcirad" in loaded
    assert loaded.isdisjoint({"pydicom", "highdicom", "scipy", "pandas", "sklearn", "matplotlib"})
