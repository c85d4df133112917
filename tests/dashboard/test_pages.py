"""Every dashboard page under Streamlit's AppTest on an empty, a normal and a corrupted store."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from trustlab.dashboard import APP
from trustlab.dashboard import PAGES as PAGE_TABLE

PAGES = [slug for slug, _, _ in PAGE_TABLE]

CHARTED = ("fairness", "explainability", "robustness", "privacy")


def _texts(app) -> list[str]:
    """Every Markdown-rendered string on the page (markdown, captions, notes, errors)."""
    elements = [*app.markdown, *app.caption, *app.info, *app.error, *app.warning,
                *app.title, *app.subheader, *app.sidebar.caption]
    return [str(e.value) for e in elements]


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_for_every_run(open_app, sample_store, page: str) -> None:
    root, run_ids = sample_store
    for run_id in run_ids:
        app = open_app(root, page, run_id)
        unexpected = [e.value for e in app.error if "errored:" not in str(e.value)]
        assert not unexpected  # only run 4's errored auditor is an error on the page
        if page in CHARTED and run_id == run_ids[0]:  # run 0 has every auditor
            assert app.get("plotly_chart"), f"{page} draws no chart for a complete run"


def test_runs_page_lists_every_run_with_status(open_app, sample_store) -> None:
    root, run_ids = sample_store
    table = open_app(root, "runs").dataframe[0].value
    assert sorted(table["run id"] if "run id" in table else table["run_id"]) == sorted(run_ids)
    assert set(table["status"]) == {"✔ passed", "✖ failed", "⚠ errored"}
    assert (table["test accuracy"].between(0, 1)).all()


def test_detail_pages_show_the_runs_own_numbers(open_app, sample_store) -> None:
    root, run_ids = sample_store
    report = json.loads((root / "runs" / run_ids[0] / "report.json").read_text())
    privacy = next(r for r in report["results"] if r["auditor"] == "privacy")["metrics"]
    app = open_app(root, "privacy", run_ids[0])
    table = app.dataframe[0].value.set_index(["attack", "quantity"])
    assert table.loc[("lira", "AUC"), "value"] == \
        pytest.approx(privacy["privacy.lira.auc"]["value"])
    assert table.loc[("lira", "TPR @ FPR=0.001"), "value"] == \
        pytest.approx(privacy["privacy.lira.tpr_at_0.001_fpr"]["value"])
    assert app.get("image"), "the inversion grid is not shown"
    facts = next(d.value for d in app.dataframe if list(d.value.columns) == ["fact", "value"])
    facts = facts.set_index("fact")["value"]
    assert facts["noise multiplier σ"] == "0.93" and facts["steps"] == "161"
    assert facts["secure mode (CSPRNG noise and sampling)"] == "no"


def test_missing_auditors_show_notes_not_errors(open_app, sample_store) -> None:
    root, run_ids = sample_store
    performance_only = run_ids[3]
    for page in CHARTED:
        app = open_app(root, page, performance_only)
        assert any("did not run on it" in str(note.value) for note in app.info), page
    app = open_app(root, "model_card", performance_only)
    assert any("No model card" in str(note.value) for note in app.info)


def test_errored_auditor_is_reported(open_app, sample_store) -> None:
    root, run_ids = sample_store
    app = open_app(root, "explainability", run_ids[4])
    assert any("out of memory" in str(e.value) for e in app.error)


def test_model_card_rendered_with_downloads(open_app, sample_store) -> None:
    root, run_ids = sample_store
    app = open_app(root, "model_card", run_ids[1])
    assert len(app.get("download_button")) == 2
    assert any("Intended use" in text for text in _texts(app))
    assert any("license: apache-2.0" in str(code.value) for code in app.code)


def test_compare_deltas_are_b_minus_a(open_app, sample_store) -> None:
    root, run_ids = sample_store
    app = open_app(root, "compare")
    table = app.dataframe[0].value.set_index("name")
    metrics = {}
    for run_id in run_ids[-2:]:
        report = json.loads((root / "runs" / run_id / "report.json").read_text())
        metrics[run_id] = {k: v["value"] for r in report["results"]
                           for k, v in r["metrics"].items()}
    a, b = metrics[run_ids[-2]], metrics[run_ids[-1]]  # A defaults to the second newest run
    name = "performance.test_accuracy"
    assert table.loc[name, "delta"] == pytest.approx(b[name] - a[name])
    assert set(table.index) == set(a) | set(b)


def test_user_strings_are_escaped(open_app, sample_store) -> None:
    root, run_ids = sample_store
    for page in ("runs", "fairness", "privacy"):
        texts = _texts(open_app(root, page, run_ids[0]))
        shown = [t for t in texts if "script" in t]
        assert shown, f"{page} does not show the model name"
        for text in shown:
            assert "<script>" not in text and "**bold**" not in text and "](" not in text
            assert r"\<script\>" in text


def test_empty_store_shows_notes_on_every_page(open_app, tmp_path: Path) -> None:
    for page in PAGES:
        app = open_app(tmp_path, page)
        assert any("No runs in the store" in str(note.value) for note in app.info), page


def test_corrupted_report_shows_an_error_card_and_others_stay_usable(
        open_app, corrupted_store) -> None:
    root, run_ids = corrupted_store
    broken, healthy = run_ids[-1], run_ids[0]
    assert len(open_app(root, "runs").dataframe[0].value) == len(run_ids)  # index still works
    for page in CHARTED:
        app = open_app(root, page, broken)
        assert any("report is unreadable" in str(e.value) for e in app.error), page
        app = open_app(root, page, healthy)
        assert not app.error and app.get("plotly_chart"), page
    app = open_app(root, "compare")
    assert any("report is unreadable" in str(e.value) for e in app.error)
    assert len(app.dataframe[0].value) > 0


def test_artifact_outside_its_run_folder_is_refused(open_app, tmp_path: Path) -> None:
    from trustlab.dashboard.sample import make_sample_store

    run_id = make_sample_store(tmp_path, n_runs=1)[0]
    path = tmp_path / "runs" / run_id / "report.json"
    report = json.loads(path.read_text())
    privacy = next(r for r in report["results"] if r["auditor"] == "privacy")
    privacy["artifacts"][0]["path"] = "../../index.sqlite"
    path.write_text(json.dumps(report))
    app = open_app(tmp_path, "privacy")
    assert any("outside its run folder" in str(w.value) for w in app.warning)


def test_pages_never_write_to_the_store(open_app, sample_store) -> None:
    root, run_ids = sample_store
    before = _tree_digest(root)
    for page in PAGES:
        open_app(root, page, run_ids[0])
    assert _tree_digest(root) == before


def test_pages_do_not_import_torch(sample_store) -> None:
    """Run every page in a fresh interpreter and check torch never got imported."""
    root, run_ids = sample_store
    script = f"""
import os, sys
os.environ["TRUSTLAB_DASHBOARD_STORE"] = {str(root)!r}
from streamlit.testing.v1 import AppTest
app = AppTest.from_file({str(APP)!r}, default_timeout=60).run()
for page in {PAGES[1:]!r}:
    app.switch_page(f"views/{{page}}.py").run()
    assert not app.exception, page
import trustlab.dashboard.launch
print("torch imported:", "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch imported: False" in out.stdout
