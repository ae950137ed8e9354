"""Admin page: review the logged corrections, export them, retrain the captioner, choose the live version."""

import base64
import hmac
import io
import shutil
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from captioner import registry, retrain
from captioner.export import ExportError, export
from captioner.feedback import STATUSES, TASKS, FeedbackError
from captioner.images import ImageError, decode, read_file
from captioner.review import Filters, delete_rows, edit_corrections, set_status, statistics
from app_pages import _shared as shared

state = st.session_state
st.title("Admin")
config = shared.settings()
if not state.get("admin_ok"):
    with st.form("login"):
        entered = st.text_input("Password", type="password")
        if st.form_submit_button("Log in"):
            if hmac.compare_digest(entered.encode(), shared.admin_password().encode()):
                state.admin_ok = True
                st.rerun()
            st.error("Wrong password.")
    st.stop()

log = shared.feedback_log()
rows, problems = log.read()
for problem in problems:
    st.warning(f"feedback.csv {problem} (left as it is)")
review, stats, exports, training, versions = st.tabs(["Review", "Statistics", "Export", "Retrain", "Versions"])


@st.cache_data(max_entries=5000)
def thumbnail(path: str, mtime: float) -> str | None:
    """A small PNG data URI of a stored image, for the table."""
    try:
        image = decode(read_file(path), max_side=256).image
    except ImageError:
        return None
    image.thumbnail((72, 72))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


with review:
    reviewer = st.text_input("Your name (recorded as reviewer)", value="admin")
    left, middle, right = st.columns(3)
    statuses = left.multiselect("Status", STATUSES, default=["pending"])
    tasks = middle.multiselect("Task", TASKS)
    model_versions = right.multiselect("Model version", sorted({r.model_version for r in rows}))
    text, period = st.columns(2)
    needle = text.text_input("Text contains")
    since, until = ([*period.date_input("Created between", value=(), format="YYYY-MM-DD")] + [None, None])[:2]
    filters = Filters(tuple(statuses), tuple(tasks), tuple(model_versions), since, until, needle)
    shown = [r for r in rows if filters.keep(r)][:500]
    st.caption(f"{len(shown)} of {len(rows)} rows" + (" (the first 500: narrow the filters)" if len(shown) == 500 else ""))
    table = pd.DataFrame([{
        "select": False,
        "image": thumbnail(str(log.data_dir / r.image_path), (log.data_dir / r.image_path).stat().st_mtime)
        if (log.data_dir / r.image_path).exists() else None,
        "task": r.task, "prompt": r.prompt, "model_output": r.model_output, "correction": r.correction,
        "status": r.status, "model_version": r.model_version, "created_at": r.created_at, "reviewer": r.reviewer,
        "id": r.id,
    } for r in shown], columns=["select", "image", "task", "prompt", "model_output", "correction", "status",
                                "model_version", "created_at", "reviewer", "id"])  # fmt: skip
    edited = st.data_editor(
        table, hide_index=True, key="review_table", width="stretch",
        disabled=[c for c in table.columns if c not in ("select", "correction")],
        column_config={"select": st.column_config.CheckboxColumn("✓"), "image": st.column_config.ImageColumn("image")},
    )  # fmt: skip
    chosen = set(edited.loc[edited["select"], "id"]) if len(edited) else set()
    changed = {i: c for i, c, old in zip(edited["id"], edited["correction"], table["correction"]) if c != old}
    approve, reject, delete, save = st.columns(4)
    actions = {
        approve: (f"Approve selected ({len(chosen)})", not chosen, lambda: f"Approved {set_status(log, chosen, 'approved', reviewer)} row(s)."),
        reject: (f"Reject selected ({len(chosen)})", not chosen, lambda: f"Rejected {set_status(log, chosen, 'rejected', reviewer)} row(s)."),
        delete: (f"Delete selected ({len(chosen)})", not chosen, lambda: f"Deleted {delete_rows(log, chosen)} row(s)."),
        save: (f"Save edited corrections ({len(changed)})", not changed,
               lambda: f"Saved {edit_corrections(log, changed, reviewer)} correction(s)."),
    }  # fmt: skip
    for column, (label, disabled, act) in actions.items():
        if column.button(label, disabled=disabled):
            try:
                state.admin_note = act()  # on disk (atomic rewrite under the lock) before the page says so
            except FeedbackError as exc:
                state.admin_note = f"Not saved: {exc}"
            st.rerun()  # show the table as the file now is, selection cleared
    if state.get("admin_note"):
        note = state.pop("admin_note")
        (st.error if note.startswith("Not saved") else st.success)(note)

with stats:
    figures = statistics(rows)
    for column, (status, count) in zip(st.columns(3), figures["by_status"].items()):
        column.metric(status, count)
    st.subheader("Correction rate per model version")
    st.caption("Share of rows where the person changed the model's output (the rest are confirmations).")
    st.bar_chart(pd.Series(figures["correction_rate"], name="correction rate"))
    st.subheader("Rows per day")
    st.bar_chart(pd.DataFrame.from_dict(figures["per_day"], orient="index").fillna(0))

with exports:
    fmt = st.radio("Format", ["hf", "jsonl"], horizontal=True,
                   format_func={"hf": "Hugging Face imagefolder", "jsonl": "JSONL"}.get)  # fmt: skip
    if st.button("Export approved rows"):
        target = config.data_dir / "exports" / f"{time.strftime('%Y%m%d-%H%M%S')}-{fmt}"
        try:
            count = export(log, target, fmt)
            archive = shutil.make_archive(str(target), "zip", target)
            state.export_done = (count, str(target), archive)
        except ExportError as exc:
            st.error(str(exc))
    if state.get("export_done"):
        count, target, archive = state.export_done
        st.success(f"Exported {count} approved rows to {target}")
        st.download_button("Download the export (zip)", Path(archive).read_bytes(), Path(archive).name, "application/zip")

with training:
    run = retrain.latest(config)
    running = run is not None and run.running
    with st.form("retrain"):
        left, right = st.columns(2)
        min_rows = left.number_input("Minimum approved rows", 1, 100_000, 20)
        epochs = right.number_input("Epochs (0: automatic)", 0, 1000, 0)
        lr = left.number_input("Learning rate", 1e-6, 0.5, 2e-3, format="%.5f")
        lora_r = right.number_input("LoRA rank", 1, 256, 16)
        activate = st.checkbox("Make it live if it passes", value=True)
        start = st.form_submit_button("Start retrain", disabled=running)
    if start:
        options = ["--min-rows", str(min_rows), "--epochs", str(epochs), "--lr", str(lr), "--lora-r", str(lora_r)]
        try:
            run = retrain.start(config, options + ([] if activate else ["--no-activate"]))
        except RuntimeError as exc:
            st.error(str(exc))

    @st.fragment(run_every=2)
    def follow() -> None:
        current = retrain.latest(config)
        if current is None:
            st.info("No retrain has run yet.")
            return
        steps = [p for p in current.progress if p.get("phase") == "train"]
        outcome = current.outcome
        if steps:
            last = steps[-1]
            st.progress(last["step"] / last["steps"], f"step {last['step']} of {last['steps']} · loss {last['loss']:.4f}")
        if outcome:
            (st.success if outcome["status"] == "published" else st.error)(f"Last retrain: {outcome['message']}")
        elif current.running:
            st.info(f"Retrain running since {time.strftime('%H:%M:%S', time.localtime(current.started))}…")
            if st.button("Cancel the retrain"):
                retrain.cancel(current)
        else:
            st.error("The last retrain ended without a result; see its log.")
        st.code(current.log_tail() or "(no output yet)", language=None)

    follow()

with versions:
    live = registry.active_version(config.models_dir)
    found = registry.list_versions(config.models_dir)
    st.caption(f"Live: {live or 'the default model (' + config.caption_model + ')'}")
    if found:
        st.dataframe(pd.DataFrame([{
            "version": v.name, "live": "●" if v.name == live else "", "created": v.created, "base": v.base,
            "rows used": v.rows_used, "exact before": v.heldout[0].get("exact_match"), "exact after": v.heldout[1].get("exact_match"),
            "new concepts before": v.new_concepts.get("before"), "new concepts after": v.new_concepts.get("after"),
            "old knowledge before": v.old_knowledge.get("before"), "old knowledge after": v.old_knowledge.get("after"),
        } for v in found]), hide_index=True)  # fmt: skip
        pick = st.selectbox("Version", [v.name for v in found][::-1])
        make_live, back = st.columns(2)
        target = pick if make_live.button(f"Activate {pick}") else None
        if live and back.button("Roll back"):
            target = registry.previous_version(config.models_dir) or "default"
        if target:
            try:
                registry.activate_checked(config, None if target == "default" else target)
                state.version_note = f"{target if target != 'default' else 'The default model'} is live; every session's next caption uses it."
            except registry.RegistryError as exc:
                state.version_note = f"Not changed: {exc}"
            st.rerun()
        if state.get("version_note"):
            note = state.pop("version_note")
            (st.error if note.startswith("Not changed") else st.success)(note)
    else:
        st.info("No fine-tuned versions yet: retrain from approved corrections.")
