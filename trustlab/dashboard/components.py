"""UI pieces every page shares: run picker, escaping, error cards, auditor sections, artifacts."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pandas as pd
import plotly.io as pio
import streamlit as st

from trustlab.audit.report import Artifact, AuditResult, Report
from trustlab.dashboard import data
from trustlab.dashboard.metrics import COLUMNS

RUN_KEY = "run_id"
# Plain symbols (not emoji): they render without an emoji font, in tables as in Markdown.
STATUS_ICON = {"passed": "✔ passed", "failed": "✖ failed", "errored": "⚠ errored"}
MAX_TABLE_ROWS = 500
SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def escape(text: object) -> str:
    """``text`` made inert for ``st.markdown``: every Markdown/HTML/LaTeX character escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def badge(status: str) -> str:
    return STATUS_ICON.get(status, f"? {status}")


def store() -> tuple[Path, float]:
    """The store root (from the launcher) and the index stamp used as the cache key."""
    root = data.store_root()
    return root, data.index_stamp(root)


def runs() -> pd.DataFrame:
    root, stamp = store()
    return data.runs_frame(str(root), stamp)


def run_label(row: pd.Series) -> str:
    return f"{row['name']} · {row['created']} · {row['run_id']}"


def empty_store_note(root: Path) -> None:
    st.info(f"No runs in the store `{root}` yet. Fill it with `make demo` (or `trustlab demo "
            "--store DIR`), then reload this page.", icon=":material/info:")


def sidebar_run_picker() -> None:
    """The run every detail page shows, chosen once in the sidebar (newest first)."""
    frame = runs()
    if frame.empty:
        return
    labels = dict(zip(frame["run_id"], frame.apply(run_label, axis=1)))
    if st.session_state.get(RUN_KEY) not in labels:
        st.session_state[RUN_KEY] = frame["run_id"].iloc[0]
    st.sidebar.selectbox("Run", list(labels), key=RUN_KEY, format_func=labels.get,
                         help="The run shown by the Fairness, Explainability, Robustness, "
                              "Privacy and Model card pages.")


def selected_report() -> Report:
    """The sidebar's run, loaded; shows a note or an error card and stops the page otherwise."""
    root, _ = store()
    run_id = st.session_state.get(RUN_KEY)
    if run_id is None:
        empty_store_note(root)
        st.stop()
    loaded = data.load_report(root, run_id)
    if loaded.report is None:
        error_card(run_id, loaded.error or "unknown error")
        st.stop()
    st.caption(f"Run **{escape(loaded.report.subject.get('name', run_id))}** "
               f"({escape(run_id)}) · {badge(loaded.report.status)}")
    return loaded.report


def error_card(run_id: str, message: str) -> None:
    """The card shown instead of a run whose report cannot be read; other runs stay usable."""
    st.error(f"**Run {escape(run_id)} cannot be shown: its report is unreadable.**  \n"
             f"{escape(message)}  \n"
             "Other runs are unaffected: pick another run in the sidebar. To repair this one, "
             "re-run its audit (or restore `report.json`) and rebuild the index.",
             icon=":material/block:")


def auditor_results(report: Report, auditors: tuple[str, ...], what: str) -> list[AuditResult]:
    """The run's results of ``auditors`` with status and findings shown; a note when none ran."""
    results = [r for r in report.results if r.auditor in auditors]
    if not results:
        ran = ", ".join(r.auditor for r in report.results) or "none"
        st.info(f"This run has no {what} results: the {' / '.join(auditors)} auditor did not "
                f"run on it (not applicable to this model, or not installed). Auditors that ran: "
                f"{escape(ran)}.", icon=":material/info:")
    for result in results:
        line = f"**{escape(result.auditor)}** auditor: {badge(result.status)}"
        st.markdown(line + (f" in {result.duration_s:.1f} s" if result.duration_s else ""))
        if result.error:
            st.error(f"{escape(result.auditor)} errored: {escape(result.error)}")
        findings_table(result)
    return results


def findings_table(result: AuditResult) -> None:
    if not result.findings:
        return
    rows = sorted(((f.severity, f.message, f.metric or "") for f in result.findings),
                  key=lambda row: SEVERITY_ORDER.get(row[0], 9))
    st.dataframe(pd.DataFrame(rows, columns=["severity", "finding", "metric"]),
                 hide_index=True)


def metric_table(frame: pd.DataFrame, title: str | None = None) -> None:
    """Metrics with their intervals, as a sortable table."""
    if frame.empty:
        return
    if title:
        st.markdown(f"**{escape(title)}**")
    st.dataframe(frame[COLUMNS], hide_index=True,
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in COLUMNS[1:]})


def all_metrics(frame: pd.DataFrame) -> None:
    with st.expander(f"All {len(frame)} metrics of this section"):
        metric_table(frame)


def artifact_sections(results: list[AuditResult],
                      sections: dict[str, tuple[str, ...]]) -> dict[str, list[Artifact]]:
    """Each artifact of ``results`` in the first section one of whose words its name or
    description contains; the others under ``"other"``. Every artifact lands exactly once."""
    placed: dict[str, list[Artifact]] = {key: [] for key in (*sections, "other")}
    unique = {a.path: a for r in results for a in r.artifacts}  # one element key per file
    for artifact in unique.values():
        text = f"{artifact.name} {artifact.description}".lower()
        key = next((k for k, words in sections.items() if any(w in text for w in words)),
                   "other")
        placed[key].append(artifact)
    return placed


def show_artifacts(report: Report, items: list[Artifact]) -> int:
    """Render plots, images and tables; returns how many. A broken one shows a warning."""
    root, _ = store()
    for artifact in items:
        _artifact(root, report.run_id, artifact)
    return len(items)


def _artifact(root: Path, run_id: str, artifact: Artifact) -> None:
    caption = escape(artifact.description or artifact.name)
    try:
        if artifact.kind == "plot":
            figure = pio.from_json(data.read_artifact_text(root, run_id, artifact))
            st.plotly_chart(figure, key=f"{run_id}/{artifact.path}")
            st.caption(caption)
        elif artifact.kind == "image":
            path = data.artifact_file(root, run_id, artifact)
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
                raise ValueError(f"image artifact {artifact.name!r} is not a PNG/JPEG file")
            st.image(str(path), caption=artifact.description or artifact.name)
        elif artifact.kind == "table":
            _table(root, run_id, artifact, caption)
        else:
            st.caption(f"{caption} ({escape(artifact.kind)} artifact in the run folder, "
                       "not displayed)")
    except (*data.READ_ERRORS, json.JSONDecodeError) as exc:
        st.warning(f"Artifact {escape(artifact.name)} cannot be shown: {escape(exc)}",
                   icon=":material/warning:")


def _table(root: Path, run_id: str, artifact: Artifact, caption: str) -> None:
    """A JSON (records, or a dict holding them) or CSV table artifact, first rows only."""
    text = data.read_artifact_text(root, run_id, artifact)
    if artifact.path.endswith(".csv"):
        frame, scalars = pd.read_csv(StringIO(text)), {}
    else:
        frame, scalars = data.table_frame(json.loads(text))
    details = ", ".join(f"{k}: {v}" for k, v in scalars.items())
    st.markdown(f"**{caption}**" + (f" ({escape(details)})" if details else ""))
    if frame is None:
        st.caption(f"{escape(artifact.name)} holds no table of records; it is kept in the run "
                   "folder for tools, not displayed.")
        return
    st.dataframe(frame.head(MAX_TABLE_ROWS), hide_index=True)
    if len(frame) > MAX_TABLE_ROWS:
        st.caption(f"first {MAX_TABLE_ROWS} of {len(frame)} rows")
