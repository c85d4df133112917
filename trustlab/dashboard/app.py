"""The dashboard's entry point (``streamlit run``): page frame, run picker and navigation.

Start it with ``trustlab dashboard --store DIR``; the store comes from the launcher only.
"""

import streamlit as st

from trustlab.dashboard import PAGES, components

st.set_page_config(page_title="trustlab dashboard", page_icon=":material/shield:", layout="wide")

page = st.navigation([st.Page(f"views/{slug}.py", title=title, icon=icon, default=i == 0)
                      for i, (slug, title, icon) in enumerate(PAGES)])
root, _ = components.store()
st.sidebar.caption(f"Store: {components.escape(root)} (read-only)")
components.sidebar_run_picker()
page.run()
