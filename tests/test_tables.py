"""Tables: CSV/Markdown/LaTeX writing with provenance, and the cohort Table 1."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from calcirad.tables import build_provenance, cohort_table, config_hash, latex_escape, write_table


def example_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": ["tc_vs_sarcoma", "tc_vs_sarcoma"],
            "feature_set": ["ct+pet", "conventional"],
            "auc": [0.91234, np.nan],
            "n_subjects": [24, 24],
        }
    )


PROVENANCE = {"config_sha256": "abc123", "seed": 7, "packages": {"numpy": "2.4.6"}}


def test_write_table_outputs_and_footer(tmp_path):
    paths = write_table(
        example_table(),
        stem=tmp_path / "performance",
        caption="AUC 95% & more",
        provenance=PROVENANCE,
    )
    assert [p.name for p in paths] == [
        "performance.csv",
        "performance.md",
        "performance.tex",
        "performance.provenance.json",
    ]
    md = paths[1].read_text()
    assert "| ct+pet" in md and "0.912" in md and "NA" in md
    assert md.rstrip().endswith(
        "_Provenance: config_sha256: abc123; packages.numpy: 2.4.6; seed: 7_"
    )
    tex = paths[2].read_text()
    assert r"\caption{AUC 95\% \& more}" in tex and r"tc\_vs\_sarcoma" in tex
    assert r"\footnotesize Provenance: config\_sha256: abc123" in tex
    assert json.loads(paths[3].read_text()) == PROVENANCE
    csv = pd.read_csv(paths[0])
    assert csv["auc"].iloc[0] == 0.91234
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_write_table_is_byte_identical(tmp_path):
    first = write_table(
        example_table(), stem=tmp_path / "a" / "t", caption="c", provenance=PROVENANCE
    )
    second = write_table(
        example_table(), stem=tmp_path / "b" / "t", caption="c", provenance=PROVENANCE
    )
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes()


def test_dotted_stem_keeps_its_name(tmp_path):
    paths = write_table(example_table(), stem=tmp_path / "table.v2", caption="c", provenance={})
    assert paths[0].name == "table.v2.csv"


def test_provenance_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    provenance = build_provenance(config={"a": 1}, seed=3)
    assert provenance["seed"] == 3 and "numpy" in provenance["packages"]
    assert latex_escape("a_b%") == r"a\_b\%"


def test_cohort_table_counts():
    samples = pd.DataFrame(
        {
            "subject": ["s1", "s2", "s3", "s4", "s5"],
            "label": ["tc", "tc", "sarcoma", "mimic", "sarcoma"],
            "site": ["A", "B", "A", "A", "B"],
            "age": [30, 40, 60, 50, 70],
        }
    )
    availability = pd.DataFrame(
        {"ct": [True] * 5, "pet": [True, False, True, False, False]},
        index=pd.Index(["s1", "s2", "s3", "s4", "s5"], name="subject"),
    )
    volumes = pd.Series({"s1": 10.0, "s2": 20.0, "s3": 100.0, "s4": 5.0, "s5": 300.0})
    failures = pd.DataFrame({"subject": ["s4"], "stage": ["segmentation"]})
    table = cohort_table(
        samples=samples, availability=availability, volumes=volumes, failures=failures
    )
    table = table.set_index("characteristic")
    assert list(table.columns) == ["tc", "sarcoma", "mimic", "all"]
    assert table.loc["Subjects, n"].tolist() == ["2", "2", "1", "5"]
    assert table.loc["Site: A, n (%)", "tc"] == "1 (50%)"
    assert table.loc["PET available, n (%)", "all"] == "2 (40%)"
    assert table.loc["Lesion volume, ml, median (IQR)", "tc"] == "15.0 (12.5-17.5)"
    assert table.loc["Excluded at segmentation, n"].tolist() == ["0", "0", "1", "1"]
    assert table.loc["Age, y, median (IQR)", "sarcoma"] == "65.0 (62.5-67.5)"
