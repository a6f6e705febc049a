"""The sample sheet: what the schema cannot check is checked before any job starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from calcirad.errors import ConfigError
from calcirad.sheet import load_samples, read_sheet

HEADER = "subject\tlabel\tsite\tdicom\tage\n"


def _sheet(tmp_path: Path, rows: list[str]) -> Path:
    for name in ("S01", "S02", "dir with space é"):
        (tmp_path / "dicom" / name).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def test_paths_are_resolved_relative_to_the_sheet_and_ids_stay_strings(tmp_path):
    path = _sheet(
        tmp_path, ["S01\ttc\tA\tdicom/S01\t40", "007\tmimic\tB\tdicom/dir with space é\t"]
    )
    samples = load_samples(path)
    assert list(samples.index) == ["S01", "007"]
    assert samples.loc["S01", "dicom"] == str((tmp_path / "dicom" / "S01").resolve())
    assert samples.loc["007", "dicom"].endswith("dir with space é")
    assert samples.loc["007", "age"] is None


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (["S01\ttc\tA\tdicom/S01\t1", "S01\tsarcoma\tA\tdicom/S02\t2"], "appears on rows 1, 2"),
        (["S01\ttumour\tA\tdicom/S01\t1"], "label 'tumour' is not one of tc, sarcoma, mimic"),
        (["S01\ttc\tA\tdicom/nowhere\t1"], "row 1 (subject S01): DICOM folder 'dicom/nowhere'"),
    ],
)
def test_sheet_errors_name_the_row_subject_and_column(tmp_path, rows, expected):
    with pytest.raises(ConfigError, match="sample sheet") as error:
        load_samples(_sheet(tmp_path, rows))
    assert expected in str(error.value)


def test_study_outside_data_root_is_refused(tmp_path):
    path = _sheet(tmp_path, ["S01\ttc\tA\tdicom/S01\t1"])
    with pytest.raises(ConfigError, match="outside data_root"):
        load_samples(path, data_root=tmp_path / "elsewhere")
    assert len(load_samples(path, data_root=tmp_path)) == 1


def test_missing_required_column(tmp_path):
    path = tmp_path / "samples.tsv"
    path.write_text("subject\tlabel\nS01\ttc\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="lacks required column"):
        load_samples(path)


def test_hash_inside_a_folder_name_is_not_a_comment(tmp_path):
    (tmp_path / "case#3").mkdir()
    path = tmp_path / "samples.tsv"
    path.write_text(HEADER + "# a comment line\nS01\ttc\tA\tcase#3\t40\n", encoding="utf-8")
    assert load_samples(path).loc["S01", "dicom"].endswith("case#3")


def test_the_example_sheet_satisfies_the_schema(repo):
    import jsonschema
    import yaml

    schema = yaml.safe_load((repo / "workflow/schemas/samples.schema.yaml").read_text())
    sheet = read_sheet(repo / "config/samples.tsv")
    assert len(sheet) == 3
    for record in sheet.to_dict(orient="records"):
        jsonschema.validate(record, schema)
    bad = {**sheet.to_dict(orient="records")[0], "label": "osteoma"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_empty_optional_cells_are_none_not_nan(tmp_path):
    """An empty mask_ct cell must not read as a path (pandas' NaN is truthy)."""
    (tmp_path / "dicom" / "S01").mkdir(parents=True)
    (tmp_path / "m.nii.gz").write_bytes(b"")
    path = tmp_path / "samples.tsv"
    path.write_text(
        "subject\tlabel\tsite\tdicom\tmask_ct\nS01\ttc\tA\tdicom/S01\t\nS02\ttc\tA\tdicom/S01\tm.nii.gz\n",
        encoding="utf-8",
    )
    samples = load_samples(path)
    assert samples.loc["S01", "mask_ct"] is None
    assert samples.loc["S02", "mask_ct"] == str((tmp_path / "m.nii.gz").resolve())
