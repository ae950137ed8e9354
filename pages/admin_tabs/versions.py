"""Versions tab: every fine-tuned version with its held-out scores; activate one or roll back."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.admin_tabs._ui import outbox, show_notes
from pages.ui.text import plain
from captioner import golive, registry
from captioner.settings import Settings


def render(config: Settings) -> None:
    pointer = registry.active_state(config.models_dir)
    live = pointer.version
    found = registry.list_versions(config.models_dir)
    if pointer.problem:  # never guessed as the default: the sidebar says which model still serves
        st.error(plain(f"{pointer.problem}. The model last served keeps serving; activate a version to repair it."))
    else:
        st.caption(f"Live: {live or 'the default model (' + config.caption_model + ')'}")
    if not found:
        st.info("No fine-tuned versions yet: retrain from approved corrections.")
        return
    st.dataframe(pd.DataFrame([{
        "version": v.name, "live": "●" if v.name == live else "", "created": v.created, "base": v.base,
        # each score beside the number of images it was measured on: 100% of 2 images proves little
        "rows used": v.rows_used, "held-out images": v.heldout[1].get("count"),
        "exact before": v.heldout[0].get("exact_match"), "exact after": v.heldout[1].get("exact_match"),
        "new concepts images": v.new_concepts.get("count"),
        "new concepts before": v.new_concepts.get("before"), "new concepts after": v.new_concepts.get("after"),
        "trained on, too few to judge": _few(v.new_concepts.get("trained_only") or {}),
        "old knowledge images": v.old_knowledge.get("count"),
        "old knowledge before": v.old_knowledge.get("before"), "old knowledge after": v.old_knowledge.get("after"),
    } for v in found]), hide_index=True)  # fmt: skip
    pick = st.selectbox("Version", [v.name for v in found][::-1])
    make_live, back = st.columns(2)
    activate = make_live.button(f"Activate {pick}")
    earlier = registry.previous_version(config.models_dir) if live else None  # named on the button: no surprise
    roll_back = bool(live) and back.button(f"Roll back to {earlier or 'the default model'}")
    notes = outbox("version_notes")
    if activate or roll_back:
        try:  # seconds of checking the version: its outcome goes into the outbox, which no rerun can drop
            target = pick if activate else earlier or "default"
            golive.activate_checked(config, None if target == "default" else target, rollback=not activate)
            notes.append(f"{target if target != 'default' else 'The default model'} is live; every session's next caption uses it.")
        except registry.RegistryError as exc:
            notes.append(f"Not changed: {exc}")
        st.rerun()
    show_notes(notes)


def _few(concepts: dict, shown: int = 8) -> str:
    """The concepts trained on but too rare to judge, most rows first; a long tail (a log of one-off names) counted."""
    ranked = sorted(concepts.items(), key=lambda pair: -pair[1])
    text = ", ".join(f"{concept} ({rows})" for concept, rows in ranked[:shown])
    return text + (f" and {len(ranked) - shown} more" if len(ranked) > shown else "")
