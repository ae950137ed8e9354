"""Entry point: `streamlit run streamlit_app.py` — navigation over pages/, the live models in the sidebar."""

import streamlit as st

from pages import _shared as shared

st.set_page_config(page_title="Captioning studio", page_icon=":material/image:", layout="wide")
navigation = st.navigation(
    [
        st.Page("pages/caption.py", title="Caption", icon=":material/image:", default=True),
        st.Page("pages/chat.py", title="Chat", icon=":material/chat:"),
    ]
)
shared.sidebar_models()
navigation.run()
