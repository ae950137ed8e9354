"""Entry point: `streamlit run streamlit_app.py` — navigation over app_pages/, the live models in the sidebar."""

from captioner import runtime

runtime.configure("app")  # threads and OpenMP wait policy, before any page loads torch

import streamlit as st  # noqa: E402

from app_pages import _shared as shared  # noqa: E402

st.set_page_config(page_title="Captioning studio", page_icon=":material/image:", layout="wide")
navigation = st.navigation(
    [
        st.Page("app_pages/caption.py", title="Caption", icon=":material/image:", default=True),
        st.Page("app_pages/chat.py", title="Chat", icon=":material/chat:"),
        st.Page("app_pages/search.py", title="Search", icon=":material/image_search:"),
        st.Page("app_pages/admin.py", title="Admin", icon=":material/admin_panel_settings:"),
    ]
)
shared.admin_password()  # made up and printed to the server log at start when none is configured
shared.sidebar_models()
navigation.run()
