"""Retrain tab: start `python -m finetune` in the background and follow its progress and log."""

from __future__ import annotations

import time

import streamlit as st

from pages.ui.text import plain
from captioner import retrain
from captioner.settings import Settings


def render(config: Settings) -> None:
    run = retrain.latest(config)
    running = run is not None and run.running
    with st.form("retrain"):
        left, right = st.columns(2)
        # each help names the option of `python -m finetune` it sets: a refusal on this page names the option
        min_rows = left.number_input("Minimum approved rows", 1, 100_000, 20, help="--min-rows: fewer approved images, no run.")
        epochs = right.number_input("Epochs (0: automatic)", 0, 1000, 0,
                                    help="--epochs: at most 10 times the steps of the automatic choice for your rows.")  # fmt: skip
        lr = left.number_input("Learning rate", 1e-6, 0.5, 2e-3, step=1e-4, format="%e",  # shown as 2e-3, 5e-6: typed so too
                               help="--lr: small rates are easiest typed as 1e-5, 5e-6 ...; the arrows step by 1e-4.")  # fmt: skip
        lora_r = right.number_input("LoRA rank", 1, 256, 16, help="--lora-r: at most the model's layer width (128 in the demo model).")
        activate = st.checkbox("Make it live if it passes", value=True)
        start = st.form_submit_button("Start retrain", disabled=running)
    if start:
        options = ["--min-rows", str(min_rows), "--epochs", str(epochs), "--lr", str(lr), "--lora-r", str(lora_r)]
        try:
            retrain.start(config, options + ([] if activate else ["--no-activate"]))
            st.rerun()  # the form again, its button disabled while the run goes on
        except (RuntimeError, OSError) as exc:  # one already running; a models folder that cannot be written
            st.error(plain(f"The retrain did not start: {exc}"))

    @st.fragment(run_every=2 if running else None)  # polls only while a run goes on
    def follow() -> None:
        current = retrain.latest(config)
        if current is None:
            st.info("No retrain has run yet.")
            return
        if current.running:
            st.session_state.retrain_followed = current.id
        elif st.session_state.get("retrain_followed") == current.id:  # it ended while this page followed it:
            st.session_state.retrain_followed = None  # the whole page again, so versions and sidebar show the new one
            st.rerun()
        records = current.progress
        steps = [p for p in records if p.get("phase") == "train"]
        outcome = current.outcome
        if current.running and records and records[-1].get("phase") not in ("train", "done"):  # done: its process exits
            _phase(records[-1])  # preparing, judging, saving: minutes where the steps alone said nothing
        elif steps:
            last = steps[-1]
            st.progress(last["step"] / last["steps"], f"step {last['step']} of {last['steps']} · loss {last['loss']:.4f}")
        if outcome:
            (st.success if outcome["status"] == "published" else st.error)(plain(f"Last retrain: {outcome['message']}"))
        elif current.running:
            st.info(f"Retrain running since {time.strftime('%H:%M:%S', time.localtime(current.started))}…")
            if st.button("Cancel the retrain"):
                retrain.cancel(current)
        else:
            st.error("The last retrain ended without a result; see its log.")
        st.code(current.log_tail() or "(no output yet)", language=None)

    follow()


def _phase(record: dict) -> None:
    """What the run is doing now, and for how long: a bar where the phase is counted, its words where it is not."""
    said = f"{record.get('said') or record.get('phase')} (for {max(0, time.time() - record.get('time', time.time())):.0f} s)"
    if record.get("total"):
        st.progress(min(1.0, record["done"] / record["total"]), said)
    else:
        st.caption(said)
