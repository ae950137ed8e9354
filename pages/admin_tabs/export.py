"""Export tab: approved rows as a Hugging Face dataset folder or JSONL, with a zip to download."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from pages.admin_tabs._ui import outbox
from pages.ui.text import plain
from captioner.export import ExportError, export, new_export_folder, zip_export
from captioner.feedback import FeedbackError, FeedbackLog


@dataclass
class ExportJob:
    """An export running in its own thread: a click or a rerun meanwhile stops the page's script, never the export
    (a progress bar drawn by the script itself was a point where Streamlit stopped it, and the export was lost)."""

    target: Path
    said: str = "Reading the approved rows…"
    share: float = 0.0
    failure: str | None = None
    thread: threading.Thread = field(default=None, repr=False)

    def step(self, what: str):
        def report(done: int, total: int) -> None:
            self.share, self.said = done / total, f"{what} {done} of {total}"

        return report


def _run(job: ExportJob, log: FeedbackLog, fmt: str, done: list) -> None:
    try:
        _export(job, log, fmt, done)
    finally:
        if job.failure:
            with contextlib.suppress(OSError):
                job.target.rmdir()  # the folder made for it, left empty by the failure: gone (rmdir never removes files)


def _export(job: ExportJob, log: FeedbackLog, fmt: str, done: list) -> None:
    try:
        report = export(log, job.target, fmt, job.step("Copied rows:"))
        archive = zip_export(job.target, job.step("Zipped files:"))
        done[:] = [(report.count, report.by_config, report.skipped, str(job.target), str(archive), report.removed)]
    except (ExportError, FeedbackError) as exc:
        job.failure = str(exc)
    except OSError as exc:  # a full or read-only data folder
        job.failure = f"The export could not be written to {job.target}: {exc.strerror or exc}"
    except Exception as exc:  # in a thread: unsaid, it would only reach the server log, and the page would show nothing
        job.failure = f"The export failed: {type(exc).__name__}: {exc}"
        raise


def render(log: FeedbackLog, data_dir: Path) -> None:
    fmt = st.radio("Format", ["hf", "jsonl"], horizontal=True,
                   format_func={"hf": "Hugging Face dataset (captions, Q&A and styled captions apart)", "jsonl": "JSONL"}.get)  # fmt: skip
    done = outbox("exports_done")  # filled by the export's thread, whatever the page did meanwhile
    jobs = outbox("export_jobs")  # in place: assigning to the session state is a point where a rerun stops the script
    busy = bool(jobs) and jobs[-1].thread.is_alive()
    if st.button("Export approved rows", disabled=busy):
        try:  # its own folder, even beside another session's export started in the same second
            job = ExportJob(new_export_folder(data_dir / "exports", fmt))
        except ExportError as exc:
            st.error(plain(str(exc)))
            return
        job.thread = threading.Thread(target=_run, args=(job, log, fmt, done), name="export", daemon=True)
        jobs[:] = [job]
        job.thread.start()
        busy = True

    @st.fragment(run_every=0.5 if busy else None)  # polls only while an export runs
    def follow() -> None:
        job = jobs[-1] if jobs else None
        if job is not None and job.thread.is_alive():
            st.session_state.export_followed = job.target
            st.progress(job.share, job.said)
            return
        if job is not None and st.session_state.get("export_followed") == job.target:
            st.session_state.export_followed = None  # it ended while followed: the whole tab again, button enabled
            st.rerun()
        if job is not None and job.failure:
            st.error(plain(job.failure))
        elif done:
            count, by_config, skipped, target, archive, removed = done[-1]
            parts = ", ".join(f"{config}: {n}" for config, n in by_config.items())
            st.success(plain(f"Exported {count} approved rows to {target} ({parts})"))
            if removed:  # an export whose app was killed midway (its session gone with it): nobody else would say
                st.info(plain(f"Removed what an export stopped midway had left in {Path(target).parent}: {', '.join(removed)}"))
            if skipped:
                st.warning(f"{len(skipped)} approved row(s) were left out:")
                st.code("\n".join(skipped), language=None, wrap_lines=True)
            # read when pressed, not on every rerun of the page (a photo export can be large)
            st.download_button("Download the export (zip)", lambda: Path(archive).read_bytes(), Path(archive).name, "application/zip")

    follow()
