"""Entry point: `streamlit run streamlit_app.py` — navigation over pages/, the live models in the sidebar."""

from captioner import runtime

runtime.configure("app")  # threads and OpenMP wait policy, before any page loads torch

import streamlit as st  # noqa: E402

from pages import inside_the_app  # noqa: E402

inside_the_app()  # before anything renders or loads: pages/ is never served on its own

st.set_page_config(page_title="Captioning studio", page_icon=":material/image:", layout="wide")
navigation = st.navigation(
    [
        st.Page("pages/caption.py", title="Caption", icon=":material/image:", default=True),
        st.Page("pages/chat.py", title="Chat", icon=":material/chat:"),
        st.Page("pages/search.py", title="Search", icon=":material/image_search:"),
        st.Page("pages/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
    ]
)  # sent before the heavy imports below, so a first visit shows the app's own navigation at once

from pages.ui import shared  # noqa: E402

shared.admin_password()  # made up and printed to the server log at start when none is configured
shared.sidebar_models()
shared.keep_widget_values()  # settings chosen on one page are there when its person comes back
navigation.run()
