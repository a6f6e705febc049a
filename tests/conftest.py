"""Fixtures shared by the test modules: the repository, the third-party data, tiny cohorts."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only third-party DICOM beside the project; tests skip with the reason if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"third-party test data not found at {SHARED_DATA} (read-only, beside the repo)"
        )
    return SHARED_DATA
