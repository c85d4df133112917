"""Fairness: each metric by group with CI bars, intersectional groups, mitigation trade-off."""

import streamlit as st

from trustlab.dashboard import charts, components
from trustlab.dashboard import metrics as m

AUDITORS = ("fairness",)

st.title("Fairness")
report = components.selected_report()
results = components.auditor_results(report, AUDITORS, "fairness")
if not results:
    st.stop()
frame = m.metrics_frame(report, AUDITORS)
groups = m.fairness_by_group(frame)
summary = m.fairness_summary(frame)
mitigation = m.containing(summary, "mitigat", "tradeoff", "trade_off")
placed = components.artifact_sections(results, {"mitigation": ("mitigat", "trade")})

if groups.empty:
    st.info("This fairness result has no per-group metrics "
            "(fairness.<feature>.by_group.<group>.<metric>).", icon=":material/info:")
for feature, part in groups.groupby("feature", sort=False):
    kind = "intersectional" if m.is_intersectional(feature) else "sensitive feature"
    st.subheader(f"{kind}: {components.escape(feature)}")
    if m.is_intersectional(feature):
        table = part.pivot_table(index="group", columns="metric", values="value")
        st.dataframe(table)
    metric_names = list(dict.fromkeys(part["metric"]))
    columns = st.columns(min(len(metric_names), 3))
    for i, metric in enumerate(metric_names):
        rows = part[part["metric"] == metric]
        columns[i % len(columns)].plotly_chart(
            charts.bars_with_ci(rows, "group", f"{metric} by {feature}"),
            key=f"fair/{feature}/{metric}")
    components.metric_table(summary[summary["name"].str.startswith(f"fairness.{feature}.")
                                    & ~summary.index.isin(mitigation.index)],
                            f"disparities for {feature}")

st.subheader("Mitigation trade-off")
shown = components.show_artifacts(report, placed["mitigation"])
components.metric_table(mitigation)
if not shown and mitigation.empty:
    st.info("No mitigation results in this run.", icon=":material/info:")

st.subheader("Other fairness artifacts")
components.show_artifacts(report, placed["other"])
components.all_metrics(frame)
