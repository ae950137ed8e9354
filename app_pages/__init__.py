"""The app's pages (one thin file each) and the UI helpers they share.

Not named pages/: Streamlit treats a pages/ folder beside the entry script as its older multipage mode
until st.navigation has run, so a browser opening /search first would get the page without the app.
"""
