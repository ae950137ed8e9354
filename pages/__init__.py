"""The app's pages (one thin file each), the UI helpers they share, and the guard every page run starts with."""

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager


def inside_the_app() -> None:
    """Serve every page through streamlit_app.py's st.navigation, even a deep link opened first on a fresh server."""
    # Seeing pages/ beside the main script, Streamlit starts in its file-based multipage mode, which would run a
    # page's file on its own (no app sidebar, helper modules listed as pages). Leaving that mode before anything
    # renders or loads, and running again, puts the same address through the app's own navigation.
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
