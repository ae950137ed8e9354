"""Versions tab: every fine-tuned version with its held-out scores; activate one or roll back."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pages.admin_tabs._ui import FAILED, outbox, show_notes
from pages.ui.text import plain
from captioner import golive, registry
from captioner.settings import Settings


def render(config: Settings) -> None:
    _carry_out_presses(config)  # before the table: it then shows what the press made live
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
    # each button is bound to what this run showed (a press runs its callback first on the next run): another admin
    # changing the live version meanwhile changed the Roll back label, and a press on the old one did nothing, silently
    make_live.button(f"Activate {pick}", key="activate", on_click=_press, args=(pick, live, False))
    earlier = registry.previous_version(config.models_dir) if live else None  # named on the button: no surprise
    if live:
        back.button(f"Roll back to {earlier or 'the default model'}", key="roll-back", on_click=_press,
                    args=(earlier, live, True))  # fmt: skip
    notes = outbox("version_notes")
    show_notes(notes)


def _press(target: str | None, shown_live: str | None, rollback: bool) -> None:
    """Keep a press with what the page showed when it was made (another admin may change the live version before
    the next run); the tab carries it out, under a status a callback could not show beside the buttons."""
    outbox("version_presses").append((target, shown_live, rollback))


def _carry_out_presses(config: Settings) -> None:
    """Each press in turn, under a status saying what runs: checking a version loads it and captions the check set,
    seconds in which the page showed nothing. A press leaves the list and its outcome joins the notes together, with
    no Streamlit call between them (a rerun stops the script only at one): it is done and said, or left to redo."""
    presses, notes = outbox("version_presses"), outbox("version_notes")
    while presses:
        target, shown_live, rollback = presses[0]
        name = target or "the default model"
        checking = f"Checking {name}: loading it and captioning the check set…" if target else f"Going back to {name}…"
        with st.status(checking) as shown:
            outcome = _go_live(config, target, shown_live, rollback)
            presses.pop(0)
            notes.append(outcome)
            failed = outcome.startswith(FAILED)
            shown.update(label=f"{name} was not made live" if failed else f"{name} passed its check" if target else
                         "Back to the default model", state="error" if failed else "complete")  # fmt: skip


def _go_live(config: Settings, target: str | None, shown_live: str | None, rollback: bool) -> str:
    """Make target live (None: the default model) after its check; a roll back only from the version it was shown
    over (rolling back from a version another admin made live since would undo theirs, not what this one saw).
    Returns the note that says what happened."""
    now_live = registry.active_state(config.models_dir).version
    if rollback and now_live != shown_live:
        return (f"Not changed: {now_live or 'the default model'} went live after this page showed {shown_live} "
                "(another admin?); roll back from it if you still want to.")  # fmt: skip
    try:
        golive.activate_checked(config, target, rollback=rollback)
    except registry.RegistryError as exc:
        return f"Not changed: {exc}"
    return f"{target or 'The default model'} is live; every session's next caption uses it."


def _few(concepts: dict, shown: int = 8) -> str:
    """The concepts trained on but too rare to judge, most rows first; a long tail (a log of one-off names) counted."""
    ranked = sorted(concepts.items(), key=lambda pair: -pair[1])
    text = ", ".join(f"{concept} ({rows})" for concept, rows in ranked[:shown])
    return text + (f" and {len(ranked) - shown} more" if len(ranked) > shown else "")
