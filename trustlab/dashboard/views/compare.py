"""Compare: two runs side by side, every indexed metric with its delta (B − A)."""

import streamlit as st

from trustlab.dashboard import charts, components, data
from trustlab.dashboard import metrics as m

MAX_BARS = 40

st.title("Compare runs")
root, stamp = components.store()
runs = components.runs()
if len(runs) < 2:
    if runs.empty:
        components.empty_store_note(root)
    else:
        st.info("Comparing needs at least two runs in the store.", icon=":material/info:")
    st.stop()

labels = dict(zip(runs["run_id"], runs.apply(components.run_label, axis=1)))
ids = list(labels)
pick = st.columns(2)
run_a = pick[0].selectbox("Run A", ids, index=1, format_func=labels.get, key="compare-a")
run_b = pick[1].selectbox("Run B", ids, index=0, format_func=labels.get, key="compare-b")
by_id = runs.set_index("run_id")
for column, run_id in zip(pick, (run_a, run_b)):
    row = by_id.loc[run_id]
    column.markdown(f"**{components.escape(row['name'])}**: {components.escape(row['arch'])} on "
                    f"{components.escape(row['dataset'])}, {components.badge(row['status'])}")
    loaded = data.load_report(root, run_id)
    if loaded.report is None:
        with column:
            components.error_card(run_id, loaded.error or "unknown error")

table = m.compare(data.run_metrics(str(root), stamp, run_a),
                  data.run_metrics(str(root), stamp, run_b))
options = st.columns([3, 1])
auditors = options[0].multiselect("auditors", sorted(table["auditor"].unique()))
changed_only = options[1].checkbox("only metrics that differ", value=False)
if auditors:
    table = table[table["auditor"].isin(auditors)]
if changed_only:
    table = table[table["delta"].fillna(1.0) != 0]
st.dataframe(table, hide_index=True,
             column_config={c: st.column_config.NumberColumn(format="%.4f")
                            for c in ("value A", "value B", "delta")})
st.caption(f"{len(table)} metrics; a blank value means that run has no such metric.")
largest = table.dropna(subset=["delta"])
largest = largest.reindex(largest["delta"].abs().sort_values(ascending=False).index)
if not largest.empty:
    st.plotly_chart(charts.delta_bars(largest.head(MAX_BARS).iloc[::-1]), key="deltas")
