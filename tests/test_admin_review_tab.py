"""The admin page's Review tab in AppTest: approving, editing and deleting rows, and what a failed write says."""

from captioner.feedback import FIELDS, FeedbackLog
from admin_app import admin, fresh_login_brake, many  # noqa: F401 (fixtures; the login brake is autouse)
from admin_app import click, edit, login, rows, selected_caption, shown


def test_approve_one_and_bulk_reject_through_the_table(admin, home):
    login(admin)
    table = admin.data_editor[0].value
    assert len(table) == 5 and set(table["status"]) == {"pending"}
    edit(admin, {0: {"select": True}})
    click(admin, "Approve selected (1)")
    approved = [r for r in rows(home) if r.status == "approved"]
    assert len(approved) == 1 and approved[0].reviewer == "admin" and approved[0].reviewed_at
    edit(admin, {0: {"select": True}, 1: {"select": True}})
    click(admin, "Reject selected (2)")
    assert sorted(r.status for r in rows(home)) == ["approved", "pending", "pending", "rejected", "rejected"]


def test_edit_a_correction_and_delete_a_row(admin, home):
    login(admin)
    first_id = admin.data_editor[0].value["id"][0]
    edit(admin, {0: {"correction": "a scarlet circle"}})
    click(admin, "Save edits (1)")
    assert {r.id: r.correction for r in rows(home)}[first_id] == "a scarlet circle"
    edit(admin, {0: {"select": True}})
    click(admin, "Delete selected (1)")
    assert first_id not in {r.id for r in rows(home)} and len(rows(home)) == 4


def test_a_correction_typed_in_a_ticked_row_goes_with_its_approval_and_one_in_another_row_stays_pending(admin, home):
    login(admin)
    ids = list(admin.data_editor[0].value["id"])
    edit(admin, {0: {"select": True, "correction": "a scarlet  circle "}, 1: {"correction": "a cobalt square"}})
    click(admin, "Approve selected (1)")
    assert any("Approved 1 row(s), with 1 edited correction(s)." in s for s in shown(admin.success))
    logged = {r.id: r for r in rows(home)}
    assert (logged[ids[0]].status, logged[ids[0]].correction) == ("approved", "a scarlet circle")  # approved as typed
    assert logged[ids[1]].status == "pending" and logged[ids[1]].correction != "a cobalt square"  # not acted on yet
    assert [b.label for b in admin.button if b.label.startswith("Save edits")] == ["Save edits (1)"]  # still pending
    assert not admin.session_state["review_selection"].ids  # nothing stays ticked
    click(admin, "Save edits (1)")
    assert {r.id: r.correction for r in rows(home)}[ids[1]] == "a cobalt square"


def test_broken_records_are_shown_as_plain_text_and_can_be_moved_aside(admin, home):
    log = FeedbackLog(home / "data")
    with open(log.csv_path, "ab") as handle:
        handle.write("**BOLD** [click](https:evil.example),x\r\n".encode())
    login(admin)
    assert [w.value for w in admin.warning] == ["feedback.csv has 1 broken record(s), left as they are: no action touches them."]
    assert any(f"line 7: expected {len(FIELDS)} fields, found 2" in c.value for c in admin.code)
    click(admin, "Move the broken records aside")
    assert not admin.warning and any("Moved 1 broken record(s)" in text for text in shown(admin.success))
    assert (home / "data" / "feedback-broken.csv").read_bytes().endswith(b"**BOLD** [click](https:evil.example),x\r\n")
    assert rows(home) and FeedbackLog(home / "data").read()[1] == []


def test_a_log_locked_too_long_is_one_message_on_the_page(admin, home, monkeypatch):
    from filelock import FileLock

    import captioner.feedback as feedback

    monkeypatch.setattr(feedback, "LOCK_TIMEOUT_S", 0.2)
    with FileLock(str(home / "data" / "feedback.csv.lock"), thread_local=False):
        login(admin)
    assert len(admin.error) == 1 and "the feedback log is busy" in admin.error[0].value and not admin.exception


def test_a_full_disk_during_an_action_is_one_message_and_the_log_is_untouched(admin, home, monkeypatch):
    import errno

    import captioner.feedback as feedback

    login(admin)
    before = (home / "data" / "feedback.csv").read_bytes()

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(feedback, "write_atomic", full)
    edit(admin, {0: {"select": True}})
    click(admin, "Approve selected (1)")
    assert len(admin.error) == 1 and "No space left on device" in admin.error[0].value and not admin.exception
    assert not admin.success and (home / "data" / "feedback.csv").read_bytes() == before


def test_an_approval_without_a_reviewer_name_is_refused_and_nothing_is_lost(many, home):
    [t for t in many.text_input if t.label.startswith("Your name")][0].set_value("  ").run()
    edit(many, {0: {"select": True}})
    click(many, "Approve selected (1)")
    assert shown(many.error) == ["Not saved: the reviewer name is empty"]  # it was approved with no reviewer at all
    assert {r.status for r in rows(home)} == {"pending"} and selected_caption(many).startswith("1 selected")


def test_an_approval_made_by_mistake_can_be_reopened_as_pending(many, home):
    click(many, "Tick all 25 on this page")
    click(many, "Approve selected (25)")
    assert sum(r.status == "approved" for r in rows(home)) == 25
    [s for s in many.multiselect if s.label == "Status"][0].set_value(["approved"]).run()
    click(many, "Tick all 25 on this page")
    click(many, "Reopen selected (25)")  # only Reject was there: a wrong approval could not go back to pending
    assert {r.status for r in rows(home)} == {"pending"} and "Reopened 25 row(s) as pending." in shown(many.success)
