"""Entry script of `streamlit run`: page registry, sidebar pickers, then the chosen page.

The navigation is drawn by `ui.sidebar` with page links (not Streamlit's own menu) so the
pickers sit beside it and every link keeps the URL-bound state.
"""

from __future__ import annotations

import streamlit as st

from driftline.dashboard import ui
from driftline.dashboard.api import Api


def main() -> None:
    st.set_page_config(page_title="driftline", page_icon="📉", layout="wide")
    pages = [
        st.Page(p.file, title=p.title, icon=p.icon, url_path=p.key, default=p.key == "overview")
        for p in ui.PAGES
    ]
    current = st.navigation(pages, position="hidden")
    with ui.guard():
        api = Api.from_env()
        ui.sidebar(api, pages)
    current.run()


if __name__ == "__main__":
    main()
