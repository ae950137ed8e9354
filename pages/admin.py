"""Admin page: log in, then review the logged corrections, export them, retrain, choose the live version."""

from pages import inside_the_app

inside_the_app()  # first: a deep link on a fresh server is rerun inside the app before this page loads anything

import streamlit as st

from pages.ui import shared
from pages.admin_tabs import export, login, retrain, review, statistics, versions
from pages.admin_tabs._ui import failure_note, outbox
from pages.ui.text import plain
from captioner.feedback import FeedbackError
from captioner.review import warm_up

st.title("Admin")
config = shared.settings()
log = shared.feedback_log()
if not login.logged_in(shared.admin_password()):
    warm_up(log)  # a large log is read while the password is typed
    st.stop()

try:
    snapshot = log.snapshot()
except (FeedbackError, OSError) as exc:  # locked by a writer for too long, or unreadable: say so, no traceback
    st.error(plain(str(exc) if isinstance(exc, FeedbackError) else f"{exc.filename or 'The log'}: {exc.strerror or exc}"))
    st.stop()
if snapshot.problems:
    st.warning(f"feedback.csv has {len(snapshot.problems)} broken record(s), left as they are: no action touches them.")
    with st.expander("Broken records"):
        st.code("\n".join(str(problem) for problem in snapshot.problems[:200]), language=None, wrap_lines=True)
        if st.button(f"Move the broken records aside (into {log.broken_path.name})"):
            notes = outbox("admin_notes")
            try:
                moved, kept = log.repair(note="the admin page")
                notes.append(f"Moved {moved} broken record(s) into {kept}; they are kept there as they were.")
            except (FeedbackError, OSError) as exc:
                notes.append(failure_note(exc))
            st.rerun()

tabs = st.tabs(["Review", "Statistics", "Export", "Retrain", "Versions"])
with tabs[0]:
    review.render(log, snapshot)
with tabs[1]:
    statistics.render(snapshot)
with tabs[2]:
    export.render(log, config.data_dir)
with tabs[3]:
    retrain.render(config)
with tabs[4]:
    versions.render(config)
