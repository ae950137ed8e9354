"""The Review tab over a log of many rows in AppTest: ticks, pages, and a table that moves under the admin."""

from captioner.feedback import FeedbackLog
from conftest import start_app
from admin_app import fresh_login_brake, many  # noqa: F401 (fixtures; the login brake is autouse)
from admin_app import button, click, edit, login, rows, selected_caption, shown, shown_ids


def test_an_action_touches_the_ticked_row_only_and_leaves_nothing_ticked(many, home):
    before = shown_ids(many)
    assert len(before) == 25 and "60 matching" in [c.value for c in many.caption if "matching" in c.value][0]
    edit(many, {1: {"select": True}})
    click(many, "Approve selected (1)")
    approved = [r.id for r in rows(home) if r.status == "approved"]
    assert approved == [before[1]]
    after = shown_ids(many)
    assert after[1] != before[1] and not any(many.data_editor[0].value["select"])
    assert button(many, "Approve selected").label == "Approve selected (0)" and button(many, "Approve selected").disabled
    many.run()  # a rerun must not bring the tick back onto the row now in its place
    assert button(many, "Approve selected").disabled and [r.id for r in rows(home) if r.status == "approved"] == approved


def test_a_rerun_asked_for_while_an_action_writes_neither_drops_its_note_nor_leaves_its_rows_ticked(many, home, monkeypatch):
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
    from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

    from pages.admin_tabs import review

    real = review.set_status

    def slow_write(*args, **kwargs):  # as a 100,000-row log: the table's late message asks for a rerun meanwhile
        written = real(*args, **kwargs)
        get_script_run_ctx().script_requests.request_rerun(RerunData())
        return written

    monkeypatch.setattr(review, "set_status", slow_write)
    first = shown_ids(many)[0]
    edit(many, {0: {"select": True}})
    click(many, "Approve selected (1)")
    assert "Approved 1 row(s)." in shown(many.success)
    assert button(many, "Approve selected").label == "Approve selected (0)"  # nothing left ticked for the next press
    edit(many, {0: {"select": True}})
    click(many, "Reject selected (1)")
    assert [r.id for r in rows(home) if r.status == "approved"] == [first]  # the next action touched its own row only
    assert len([r for r in rows(home) if r.status == "rejected"]) == 1


def test_a_row_another_session_reviewed_since_you_saw_it_is_left_as_they_made_it(many, home):
    other = login(start_app("pages/admin.py"))  # a second admin, on the same log
    target = shown_ids(many)[0]
    edit(many, {0: {"select": True}})
    edit(other, {0: {"select": True}, 1: {"select": True}})
    click(many, "Approve selected (1)")
    click(other, "Reject selected (2)")
    status = {r.id: r.status for r in rows(home)}
    assert status[target] == "approved"  # the first admin's approval stands; the second's reject took only the other row
    assert sorted(status.values()).count("rejected") == 1
    [note] = shown(other.success)
    assert note.startswith("Rejected 1 row(s).") and "1 row(s) changed in another session since you saw them" in note
    assert "now approved, changed by admin" in note


def test_ticks_on_several_pages_add_up_by_id(many, home):
    page_one = shown_ids(many)
    edit(many, {0: {"select": True}})
    click(many, "Next page")
    page_two = shown_ids(many)
    assert not set(page_one) & set(page_two)
    edit(many, {2: {"select": True}})
    assert "2 selected (1 not on this page)" in [c.value for c in many.caption if "selected" in c.value][0]
    click(many, "Reject selected (2)")
    assert sorted(r.id for r in rows(home) if r.status == "rejected") == sorted([page_one[0], page_two[2]])


def test_ticks_and_typing_on_a_table_that_moved_under_them_land_on_the_rows_shown(many, home, demo_png):
    """A user logs a correction while the admin works: the page's rows shift, the admin's edits stay on theirs."""
    shown = shown_ids(many)
    edit(many, {1: {"select": True}})
    FeedbackLog(home / "data").record(demo_png(), "png", task="caption", model_output="a blob", correction="just in")
    edit(many, {1: {"select": False}, 3: {"select": True}, 4: {"correction": "typed by the admin"}})  # on the old table
    assert shown_ids(many)[1:4] == shown[0:3]  # the new correction came first: the rows moved down
    assert "1 selected · 1 correction(s) edited" in [c.value for c in many.caption if "selected" in c.value][0]
    click(many, "Approve selected (1)")
    assert [r.id for r in rows(home) if r.status == "approved"] == [shown[3]]  # not shown[1], not the new row
    edit(many, {0: {"correction": "typed again"}})  # the first typing (a row not ticked) is still pending beside it
    FeedbackLog(home / "data").record(demo_png(), "png", task="caption", model_output="a blob", correction="later")
    many.run()
    click(many, "Save edits (2)")
    corrections = {r.id: r.correction for r in rows(home)}
    assert corrections[shown_ids(many)[1]] == "typed again" and list(corrections.values()).count("typed again") == 1
    assert corrections[shown[4]] == "typed by the admin" and list(corrections.values()).count("typed by the admin") == 1


def test_every_row_is_reachable_and_the_least_confident_come_first(many, home):
    seen = []
    for _ in range(3):
        seen += shown_ids(many)
        if not button(many, "Next page").disabled:
            click(many, "Next page")
    assert sorted(seen) == sorted(r.id for r in rows(home)) and len(seen) == 60
    [s for s in many.selectbox if s.label == "Order"][0].set_value("least_confident").run()
    scores = list(many.data_editor[0].value["score"])
    assert scores == sorted(scores) and scores[0] == -5.9
    assert "page 1 of 3" in [c.value for c in many.caption if "matching" in c.value][0]  # a new order starts on page 1


def test_tick_all_on_this_page_ticks_exactly_the_rows_shown_even_when_the_log_moved_before_the_press(many, home, demo_png):
    shown = shown_ids(many)
    edit(many, {3: {"correction": "typed first"}})  # typing on the table before the press is kept
    FeedbackLog(home / "data").record(demo_png(), "png", task="caption", model_output="a blob", correction="just in")
    click(many, "Tick all 25 on this page")  # the press was made on the table without the new row
    assert selected_caption(many).startswith("25 selected") and "1 correction(s) edited" in selected_caption(many)
    assert shown_ids(many)[1:] == shown[:24] and list(many.data_editor[0].value["select"]) == [False] + [True] * 24
    many.run()  # a rerun keeps them
    edit(many, {1: {"select": False}})  # untick one by hand: the rest stay
    assert selected_caption(many).startswith("24 selected (1 not on this page)")
    click(many, "Approve selected (24)")
    status = {r.id: r.status for r in rows(home)}
    assert sorted(i for i, s in status.items() if s == "approved") == sorted(shown[1:])
    assert [r.correction for r in rows(home) if r.id == shown[3]] == ["typed first"]
    assert selected_caption(many).startswith("0 selected") and not any(many.data_editor[0].value["select"])


def test_tick_all_matching_reaches_rows_on_every_page_and_only_those(many, home):
    [s for s in many.multiselect if s.label == "Status"][0].set_value(["pending"]).run()
    [t for t in many.text_input if t.label == "Text contains"][0].set_value("row 1").run()  # row 01 and row 10-19
    assert not [b for b in many.button if b.label.startswith("Tick all") and "matching" in b.label]  # all on one page
    [t for t in many.text_input if t.label == "Text contains"][0].set_value("").run()
    click(many, "Next page")
    click(many, "Tick all 60 matching")
    assert selected_caption(many).startswith("60 selected (35 not on this page)")
    assert button(many, "Tick all 25 on this page").disabled
    click(many, "Reject selected (60)")
    assert {r.status for r in rows(home)} == {"rejected"} and len(rows(home)) == 60
    assert "Rejected 60 row(s)." in shown(many.success) and selected_caption(many).startswith("0 selected")


def test_unticking_all_keeps_the_corrections_typed_and_discarding_them_is_its_own_button(many, home):
    edit(many, {0: {"correction": "typed, not ticked"}, 1: {"select": True}, 2: {"select": True}})
    assert selected_caption(many).startswith("2 selected · 1 correction(s) edited")
    click(many, "Untick all (2)")  # "Clear selection" dropped the typed correction with the ticks
    assert selected_caption(many).startswith("0 selected · 1 correction(s) edited")
    assert list(many.data_editor[0].value["correction"])[0] == "typed, not ticked" and not any(many.data_editor[0].value["select"])
    edit(many, {3: {"select": True}})
    click(many, "Discard edits (1)")
    assert selected_caption(many).startswith("1 selected · 0 correction(s) edited")
    assert list(many.data_editor[0].value["correction"])[0] == "row 00"  # the log's own text again
    assert [r.correction for r in rows(home)].count("typed, not ticked") == 0
