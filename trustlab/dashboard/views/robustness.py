"""Robustness: robust accuracy vs ε, certified accuracy vs radius, backdoor results."""

import streamlit as st

from trustlab.dashboard import charts, components
from trustlab.dashboard import metrics as m

AUDITORS = ("robustness", "backdoor", "poisoning")
BACKDOOR = ("backdoor", "poison", "trigger")
CURVES = (("Robust accuracy vs ε", ("eps", "epsilon"), "ε (perturbation budget)"),
          ("Certified accuracy vs radius", ("radius",), "certified radius"))
SECTIONS = {"Certified accuracy vs radius": ("certif", "radius", "smoothing"),
            "backdoor": BACKDOOR,
            "Robust accuracy vs ε": ("evasion", "eps", "pgd", "fgsm", "adversarial", "robust")}

st.title("Robustness")
report = components.selected_report()
results = components.auditor_results(report, AUDITORS, "robustness")
if not results:
    st.stop()
frame = m.metrics_frame(report, AUDITORS)
curves = m.parameter_curves(frame)
placed = components.artifact_sections(results, SECTIONS)

for title, parameters, axis in CURVES:
    st.subheader(title)
    part = curves[curves["parameter"].isin(parameters)]
    shown = components.show_artifacts(report, placed[title])
    if not part.empty:
        st.plotly_chart(charts.curves_with_ci(part, axis, title), key=f"curve/{title}")
    elif not shown:
        st.info(f"No {title.split(' vs ')[0].lower()} results in this run.", icon=":material/info:")

st.subheader("Backdoor / poisoning")
backdoor = m.containing(frame, *BACKDOOR)
shown = components.show_artifacts(report, placed["backdoor"])
if not backdoor.empty:
    labelled = backdoor.assign(metric=backdoor["name"].str.split(".", n=1).str[1])
    st.plotly_chart(charts.bars_with_ci(labelled, "metric", "backdoor results"), key="backdoor")
    components.metric_table(backdoor)
elif not shown:
    st.info("No backdoor results in this run.", icon=":material/info:")

st.subheader("Other robustness artifacts")
components.show_artifacts(report, placed["other"])
components.all_metrics(frame)
