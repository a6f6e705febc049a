"""Atomic writes: a writer killed mid-write leaves no file under the final name, and the next
write of that destination clears the temporary file the dead writer left."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from calcirad.atomic import atomic_path, write_text

WRITER = """
import sys, time
from calcirad.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    with tmp.open("w") as handle:
        handle.write("partial")
        handle.flush()
        print("writing", flush=True)
        time.sleep(60)
"""


def test_a_killed_writer_leaves_nothing_under_the_final_name(tmp_path: Path):
    destination = tmp_path / "table.csv"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(destination)], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)  # no finally clause runs
    writer.wait(timeout=30)
    assert not destination.exists()
    leftovers = list(tmp_path.glob(".table.csv.*.tmp.csv"))
    assert len(leftovers) == 1 and leftovers[0].read_text() == "partial"
    write_text(destination, "complete\n")
    assert destination.read_text() == "complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_failed_write_keeps_the_old_file_and_other_files_alone(tmp_path: Path):
    destination = tmp_path / "mask.nii.gz"
    destination.write_bytes(b"old")
    neighbour = tmp_path / ".other.nii.gz.abc.tmp.nii.gz"  # another destination's temporary
    neighbour.write_bytes(b"x")
    try:
        with atomic_path(destination) as tmp:
            tmp.write_bytes(b"new, half")
            raise RuntimeError("killed")
    except RuntimeError:
        pass
    assert destination.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [neighbour.name, "mask.nii.gz"]
