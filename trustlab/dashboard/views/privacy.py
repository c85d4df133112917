"""Privacy: attack ROC curves (log–log), TPR at low FPR, claimed vs empirical ε, exposed
examples, model-inversion images and attribute-inference advantage."""

import streamlit as st

from trustlab.dashboard import charts, components
from trustlab.dashboard import metrics as m

AUDITORS = ("privacy", "membership", "inversion", "attribute_inference")
SECTIONS = {"roc": ("roc",), "exposed": ("expos", "vulnerab", "top_"),
            "inversion": ("inversion", "reconstruct"), "attribute": ("attribute",),
            "epsilon": ("epsilon",)}

st.title("Privacy")
report = components.selected_report()
results = components.auditor_results(report, AUDITORS, "privacy")
if not results:
    st.stop()
frame = m.metrics_frame(report, AUDITORS)
placed = components.artifact_sections(results, SECTIONS)
attacks = m.privacy_attacks(frame)

st.subheader("Membership-inference attacks")
if not components.show_artifacts(report, placed["roc"]):
    st.info("No ROC curves stored for this run.", icon=":material/info:")
if attacks.empty:
    st.info("No per-attack AUC or TPR-at-FPR metrics in this run.", icon=":material/info:")
else:
    low_fpr = attacks[attacks["quantity"] != "AUC"].sort_values("fpr")
    if not low_fpr.empty:
        st.plotly_chart(charts.bars_with_ci(low_fpr, "attack", "TPR at low FPR (log scale)",
                                            color="quantity", log_y=True), key="tpr")
    table = attacks.assign(ci=attacks.apply(
        lambda r: "" if r.isna()["ci_low"] else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]",
        axis=1))
    st.dataframe(table[["attack", "quantity", "value", "ci"]], hide_index=True,
                 column_config={"value": st.column_config.NumberColumn(format="%.4f")})

by_group = m.privacy_by_group(frame)
for (attack, feature), part in by_group.groupby(["attack", "feature"], sort=False):
    st.plotly_chart(charts.bars_with_ci(part.assign(fpr="TPR @ FPR=" + part["fpr"]), "group",
                                        f"{attack}: TPR at low FPR by {feature}", color="fpr"),
                    key=f"group/{attack}/{feature}")

st.subheader("Claimed vs empirical ε")
eps = m.epsilons(frame)
components.show_artifacts(report, placed["epsilon"])
facts = report.subject.get("privacy")
if facts:
    st.caption("How the model was trained with DP-SGD (the claimed ε's accounting):")
    st.dataframe(m.dp_training_facts(facts), hide_index=True)
if eps.empty:
    st.info("This run has no ε to compare" + ("" if facts else ": the model was not trained "
            "with differential privacy") + ".", icon=":material/info:")
else:
    st.plotly_chart(charts.epsilon_bars(eps), key="epsilon")
    st.caption("The empirical ε is a statistical lower bound from auditing; a sound accountant "
               "must claim at least as much.")

for title, key in (("Most exposed examples", "exposed"), ("Model inversion", "inversion")):
    st.subheader(title)
    if not components.show_artifacts(report, placed[key]):
        st.info(f"No {title.lower()} in this run.", icon=":material/info:")

st.subheader("Attribute inference")
advantage = m.containing(frame, "attribute")
components.show_artifacts(report, placed["attribute"])
if advantage.empty:
    st.info("No attribute-inference results in this run.", icon=":material/info:")
else:
    labelled = advantage.assign(metric=advantage["name"].str.split(".", n=1).str[1])
    st.plotly_chart(charts.bars_with_ci(labelled, "metric", "attribute-inference results"),
                    key="attribute")
    components.metric_table(advantage)

st.subheader("Other privacy artifacts")
components.show_artifacts(report, placed["other"])
components.all_metrics(frame)
