"""Explainability: attribution heatmap grids, feature importance, sanity and faithfulness checks."""

import streamlit as st

from trustlab.dashboard import charts, components
from trustlab.dashboard import metrics as m

AUDITORS = ("explain", "explainability")
HEATMAPS = ("heatmap", "attribution", "saliency", "grid")
IMPORTANCE = ("importance",)
SANITY = ("sanity", "randomiz", "cascad")
FAITHFULNESS = ("faithful", "deletion", "insertion", "infidelity", "sensitivity", "aopc",
                "comprehensiveness", "sufficiency")

st.title("Explainability")
report = components.selected_report()
results = components.auditor_results(report, AUDITORS, "explainability")
if not results:
    st.stop()
frame = m.metrics_frame(report, AUDITORS)
placed = components.artifact_sections(results, {"heatmaps": HEATMAPS, "importance": IMPORTANCE})

st.subheader("Attribution heatmaps")
if not components.show_artifacts(report, placed["heatmaps"]):
    st.info("No heatmap grids in this run.", icon=":material/info:")

st.subheader("Feature importance")
importance = m.containing(frame, *IMPORTANCE)
shown = components.show_artifacts(report, placed["importance"])
for method, part in importance.groupby(importance["name"].str.rsplit(".", n=1).str[0]):
    st.plotly_chart(charts.horizontal_bars(part["name"].map(m.last_part).tolist(),
                                           part["value"].to_numpy(), method),
                    key=f"importance/{method}")
if importance.empty and not shown:
    st.info("No feature-importance results in this run.", icon=":material/info:")

for title, words in (("Sanity checks", SANITY), ("Faithfulness", FAITHFULNESS)):
    st.subheader(title)
    rows = m.containing(frame, *words)
    if rows.empty:
        st.info(f"No {title.lower()} results in this run.", icon=":material/info:")
        continue
    labelled = rows.assign(metric=rows["name"].str.split(".", n=1).str[1])
    st.plotly_chart(charts.bars_with_ci(labelled, "metric", title), key=f"bars/{title}")
    components.metric_table(rows)

st.subheader("Other explainability artifacts")
components.show_artifacts(report, placed["other"])
components.all_metrics(frame)
