"""Fairness: metrics by group with CI bars, intersectional groups, mitigation trade-off."""

import streamlit as st

from trustlab.dashboard import charts, components
from trustlab.dashboard import metrics as m

AUDITORS = ("fairness",)
DEFAULT_RATES = ("selection_rate", "true_positive_rate", "false_positive_rate", "accuracy")

st.title("Fairness")
report = components.selected_report()
results = components.auditor_results(report, AUDITORS, "fairness")
if not results:
    st.stop()
frame = m.metrics_frame(report, AUDITORS)
groups = m.fairness_by_group(frame)
mitigation = m.fairness_mitigation(frame)
placed = components.artifact_sections(results, {"mitigation": ("tradeoff", "mitigat")})

if groups.empty:
    st.info("This fairness result has no per-group metrics "
            "(fairness.<feature>.by_group.<group>.<metric>).", icon=":material/info:")
else:
    available = list(dict.fromkeys(groups["metric"]))
    rates = st.multiselect("metrics by group", available,
                           default=[r for r in DEFAULT_RATES if r in available] or available[:1])
for feature, part in groups.groupby("feature", sort=False):
    intersectional = m.is_intersectional(feature)
    st.subheader(f"{'Intersectional groups' if intersectional else 'Sensitive feature'}: "
                 f"{components.escape(feature)}")
    shown = part[part["metric"].isin(rates)]
    if not shown.empty:
        st.plotly_chart(charts.bars_with_ci(shown, "group", f"{feature}: metrics by group "
                                            "(95% CI)", color="metric"), key=f"fair/{feature}")
    if intersectional:
        st.dataframe(part.pivot_table(index="group", columns="metric", values="value"))
    components.metric_table(m.fairness_disparities(frame, feature),
                            f"disparities across {feature} groups")

st.subheader("Mitigation trade-off")
shown = components.show_artifacts(report, placed["mitigation"])
if not mitigation.empty:
    st.dataframe(mitigation.pivot_table(index=["feature", "method"], columns="metric",
                                        values="value").reset_index(), hide_index=True)
elif not shown:
    st.info("No mitigation results in this run.", icon=":material/info:")

st.subheader("Other fairness artifacts")
components.show_artifacts(report, placed["other"])
components.all_metrics(frame)
