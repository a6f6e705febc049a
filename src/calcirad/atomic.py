"""Atomic file writes: a killed job never leaves a partial file under its final name.

Every writer produces a temporary sibling (same folder, so the rename stays on one file system)
and renames it over the destination only once the content is complete.
"""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; rename it over ``destination`` on success.

    The temporary name keeps the destination's suffixes (``.nii.gz``, ``.csv``...) so writers that
    pick a format from the file name still work.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(destination.suffixes)
    # A writer killed with SIGKILL (no finally) leaves its temporary file: remove such leftovers
    # of earlier attempts (one writer per destination at a time, as Snakemake guarantees).
    for stale in destination.parent.glob(f".{glob.escape(destination.name)}.*.tmp{suffix}"):
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=f".tmp{suffix}", dir=destination.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, destination)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(destination: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` newlines) atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_bytes(destination: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` atomically."""
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
