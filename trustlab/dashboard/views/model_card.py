"""Model card: the run's generated card rendered, with Markdown and HTML downloads."""

import streamlit as st

from trustlab.dashboard import components, data

st.title("Model card")
root, _ = components.store()
run_id = st.session_state.get(components.RUN_KEY)
if run_id is None:
    components.empty_store_note(root)
    st.stop()
st.caption(f"Run {components.escape(run_id)}")
cards = data.model_card(root, run_id)
if not cards:
    st.info("No model card for this run yet: cards are generated next to the report as "
            "card.md and card.html (`trustlab card`); reload once it exists.",
            icon=":material/info:")
    st.stop()

buttons = st.columns(4)
for column, (kind, mime) in zip(buttons, (("md", "text/markdown"), ("html", "text/html"))):
    if kind in cards:
        column.download_button(f"Download card.{kind}", cards[kind], file_name=f"{run_id}-card."
                               f"{kind}", mime=mime, key=f"download-{kind}")
if "md" in cards:
    metadata, body = data.split_front_matter(cards["md"])
    if metadata:
        with st.expander("Card metadata (YAML)"):
            st.code(metadata, language="yaml")
    st.markdown(body)  # raw HTML inside the card is not rendered (no unsafe_allow_html)
else:
    st.info("Only the HTML card exists; download it above.", icon=":material/info:")
