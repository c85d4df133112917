"""Runs: every run of the store with gate status, auditor statuses, key metrics and a trend."""

import streamlit as st

from trustlab.dashboard import charts, components, data

st.title("Runs")
root, stamp = components.store()
runs = components.runs()
if runs.empty:
    components.empty_store_note(root)
    st.stop()

filters = st.columns(4)
chosen = {column: filters[i].multiselect(column, sorted(runs[column].dropna().unique()))
          for i, column in enumerate(("dataset", "arch", "status"))}
search = filters[3].text_input("model name contains")
shown = runs
for column, values in chosen.items():
    if values:
        shown = shown[shown[column].isin(values)]
if search:
    shown = shown[shown["name"].fillna("").str.contains(search, case=False, regex=False)]

counts = runs["status"].value_counts()
summary = st.columns(4)
summary[0].metric("runs", len(runs))
for column, status in zip(summary[1:], ("passed", "failed", "errored")):
    column.metric(components.badge(status), int(counts.get(status, 0)))

table = shown.copy()
status_columns = ["status", *(c for c in table.columns if c.startswith("auditor:"))]
for column in status_columns:
    table[column] = table[column].map(components.badge, na_action="ignore").fillna("not run")
table = table.rename(columns=lambda c: c.removeprefix("auditor:"))
metric_columns = [label for label, _, _ in data.KEY_METRICS if label in table.columns]
auditor_columns = [c.removeprefix("auditor:") for c in status_columns[1:]]
order = ["name", "dataset", "arch", "status", *metric_columns, "serious findings",
         *auditor_columns, "created", "run_id"]
st.dataframe(table, hide_index=True, height=min(38 + 35 * len(table), 600),
             column_order=[c for c in order if c in table.columns],
             column_config={"run_id": st.column_config.TextColumn("run id"),
                            **{c: st.column_config.NumberColumn(format="%.3f")
                               for c in metric_columns}})
st.caption(f"{len(shown)} of {len(runs)} runs. Status is the run's gate status: errored if an "
           "auditor errored, failed if an auditor failed, else passed; one column per auditor.")

st.subheader("Trend of a metric across runs")
names = data.metric_names(str(root), stamp)
if names:
    default = names.index("performance.test_accuracy") if "performance.test_accuracy" in names \
        else 0
    metric = st.selectbox("metric", names, index=default)
    series = data.metric_trend(str(root), stamp, metric)
    series = series[series["run_id"].isin(shown["run_id"])]
    if series.empty:
        st.info("No run in the filtered set has this metric.", icon=":material/info:")
    else:
        st.plotly_chart(charts.trend(series, metric))

st.subheader("Run details")
run_id = st.session_state.get(components.RUN_KEY)
if run_id is not None:
    row = runs.set_index("run_id").loc[run_id]
    st.markdown(f"**{components.escape(row['name'])}** ({components.escape(run_id)}): "
                f"{components.escape(row['arch'])} on {components.escape(row['dataset'])}, "
                f"{components.badge(row['status'])}. Pick another run in the sidebar.")
    findings = data.run_findings(str(root), stamp, run_id)
    if findings.empty:
        st.caption("No findings recorded for this run.")
    else:
        order = findings["severity"].map(components.SEVERITY_ORDER)
        st.dataframe(findings.assign(_o=order).sort_values("_o").drop(columns="_o"),
                     hide_index=True)
    metrics = data.run_metrics(str(root), stamp, run_id)
    with st.expander(f"All {len(metrics)} indexed metrics of this run"):
        components.metric_table(metrics)
