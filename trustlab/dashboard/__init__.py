"""The Streamlit dashboard over a report store: ``trustlab dashboard --store DIR``.

Reads the store only; never trains, attacks or imports torch at page load.
"""

from pathlib import Path

APP = Path(__file__).with_name("app.py")
STORE_ENV = "TRUSTLAB_DASHBOARD_STORE"  # how the launcher names the store; never set by a page
# (file in views/ without .py = URL path, title, icon); the first is the landing page.
PAGES = (("runs", "Runs", ":material/table_rows:"),
         ("fairness", "Fairness", ":material/balance:"),
         ("explainability", "Explainability", ":material/search_insights:"),
         ("robustness", "Robustness", ":material/shield:"),
         ("privacy", "Privacy", ":material/lock:"),
         ("model_card", "Model card", ":material/description:"),
         ("compare", "Compare", ":material/compare_arrows:"))
