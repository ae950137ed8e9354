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
    st.subheader("Correction rate per captioner version")
    st.caption("Share of caption rows where the person changed the caption (the rest are confirmations).")
    rates = pd.DataFrame({"correction rate": figures["correction_rate"], "caption rows": figures["rows_per_version"]})
    st.bar_chart(rates["correction rate"])
    st.dataframe(rates, column_config={"correction rate": st.column_config.NumberColumn(format="percent")})
    st.subheader("Rows per day (UTC)")
    per_day = pd.DataFrame.from_dict(figures["per_day"], orient="index").fillna(0)
    if len(per_day):  # a time axis: days without a row show as empty, not left out
        per_day.index = pd.to_datetime(per_day.index)
        per_day = per_day.reindex(pd.date_range(per_day.index.min(), per_day.index.max(), freq="D"), fill_value=0)
    st.bar_chart(per_day)
