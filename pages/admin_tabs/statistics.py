"""Statistics tab: rows by status, correction rate per model version, rows per day."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from captioner.feedback_snapshot import Snapshot
from captioner.review import snapshot_statistics


def render(snapshot: Snapshot) -> None:
    figures = snapshot_statistics(snapshot)
    for column, (status, count) in zip(st.columns(3), figures["by_status"].items()):
        column.metric(status, count)
    st.subheader("Correction rate per model version")
    st.caption("Share of rows where the person changed the model's output (the rest are confirmations).")
    st.bar_chart(pd.Series(figures["correction_rate"], name="correction rate"))
    st.subheader("Rows per day")
    st.bar_chart(pd.DataFrame.from_dict(figures["per_day"], orient="index").fillna(0))
