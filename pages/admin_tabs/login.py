"""The admin page's password gate: one guard per server process brakes repeated failures per client."""

from __future__ import annotations

import streamlit as st

from captioner.login import LoginGuard

GUARD = LoginGuard()  # this module is imported once per server process, so every session shares it


def client() -> str:
    """The client's address as the server sees it ("local" for a browser on this machine)."""
    try:
        address = st.context.ip_address
    except Exception:  # no client context (a script run outside a browser session)
        address = None
    return address if isinstance(address, str) and address else "local"


def logged_in(password: str) -> bool:
    """True once this session has given the password; otherwise show the form and say why an attempt failed."""
    if st.session_state.get("admin_ok"):
        return True
    with st.form("login"):
        entered = st.text_input("Password", type="password")
        if st.form_submit_button("Log in"):
            verdict = GUARD.attempt(client(), entered, password)
            if verdict.ok:
                st.session_state.admin_ok = True
                st.rerun()
            st.error(verdict.message())
    return False
