"""Export tab: approved rows as a Hugging Face dataset folder or JSONL, with a zip to download."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from pages.admin_tabs._ui import outbox
from pages.ui.text import plain
from captioner.export import ExportError, export, zip_export
from captioner.feedback import FeedbackError, FeedbackLog


def render(log: FeedbackLog, data_dir: Path) -> None:
    fmt = st.radio("Format", ["hf", "jsonl"], horizontal=True,
                   format_func={"hf": "Hugging Face dataset (captions, Q&A and styled captions apart)", "jsonl": "JSONL"}.get)  # fmt: skip
    done = outbox("exports_done")  # a minute's export: no click meanwhile may drop what it made
    if st.button("Export approved rows"):
        target = data_dir / "exports" / f"{time.strftime('%Y%m%d-%H%M%S')}-{fmt}"
        bar = st.progress(0.0, "Reading the approved rows…")
        try:
            report = export(log, target, fmt, lambda n, total: bar.progress(n / total, f"Copied {n} of {total} rows"))
            archive = zip_export(target, lambda n, total: bar.progress(n / total, f"Zipped {n} of {total} files"))
            done[:] = [(report.count, report.by_config, report.skipped, str(target), str(archive))]
        except (ExportError, FeedbackError) as exc:
            st.error(plain(str(exc)))
        except OSError as exc:  # a full or read-only data folder
            st.error(plain(f"The export could not be written to {target}: {exc.strerror or exc}"))
        bar.empty()
    if done:
        count, by_config, skipped, target, archive = done[-1]
        parts = ", ".join(f"{config}: {n}" for config, n in by_config.items())
        st.success(plain(f"Exported {count} approved rows to {target} ({parts})"))
        if skipped:
            st.warning(f"{len(skipped)} approved row(s) were left out:")
            st.code("\n".join(skipped), language=None, wrap_lines=True)
        # read when pressed, not on every rerun of the page (a photo export can be large)
        st.download_button("Download the export (zip)", lambda: Path(archive).read_bytes(), Path(archive).name, "application/zip")
