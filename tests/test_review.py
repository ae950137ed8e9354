"""Reviewing at scale: paging reaches every row, sorting by time and by the model's confidence, the selection
kept by id, and edits that touch exactly the ids given."""

import json
import time

import pytest

from captioner.feedback import FeedbackLog, FeedbackRow
from captioner.review import Filters, delete_rows, matching_rows, page_of, set_status, statistics
from captioner.selection import Selection


def make_rows(n, start=0, **fields):
    """n valid rows (scores from -0.0 down, created a second apart), as a bulk import would bring them."""
    return [
        FeedbackRow(
            id=f"row-{i:06d}", created_at=f"2026-01-{1 + i // 86400 % 28:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}+00:00",
            image_sha256=f"{i:064x}", image_path=f"images/{i:064x}.png", task="qa" if i % 10 == 0 else "caption",
            prompt="", model="demo", model_version=f"v{i % 3}", model_output="a red circle",
            correction=f"correction {i}", status="pending", settings=json.dumps({"num_beams": 3}),
            score=f"{-(i % 97) / 10:.4f}" if i % 5 else "",
        )._replace(**fields)
        for i in range(start, start + n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def big_log(tmp_path_factory):
    """A 100,000-row log, built by one bulk append (a couple of seconds)."""
    log = FeedbackLog(tmp_path_factory.mktemp("big"))
    log.append(make_rows(100_000))
    return log


def test_every_row_is_reachable_page_by_page_at_100000_rows(big_log):
    snapshot = big_log.snapshot()
    filters = Filters(statuses=("pending",), tasks=("caption",))
    first = page_of(snapshot, filters, "newest", 1, 100)
    assert first.matching == 90_000 and first.pages == 900 and first.total == 100_000
    seen = [row.id for number in range(1, first.pages + 1) for row in page_of(snapshot, filters, "newest", number, 100).rows]
    assert len(seen) == len(set(seen)) == 90_000
    assert page_of(snapshot, filters, "newest", 10_000, 100).number == 900  # past the end: the last page
    started = time.perf_counter()
    page_of(snapshot, filters, "newest", 450, 100)
    assert time.perf_counter() - started < 0.05  # the filtered order is remembered for this snapshot


def test_least_confident_first_puts_rows_without_a_score_last(big_log):
    rows = matching_rows(big_log.snapshot(), Filters(), "least_confident")
    scored = [float(r.score) for r in rows if r.score]
    assert scored == sorted(scored) and scored[0] == -9.6
    assert all(not r.score for r in rows[len(scored) :]) and len(rows) == 100_000
    most = matching_rows(big_log.snapshot(), Filters(), "most_confident")
    assert float(most[0].score) == max(scored) and not most[-1].score


def test_newest_first_compares_moments_not_text(tmp_path):
    log = FeedbackLog(tmp_path)
    log.append([
        *make_rows(1, created_at="2026-03-01T10:00:00+00:00"),
        *make_rows(1, start=1, created_at="2026-03-01T11:30:00+02:00"),  # 09:30 UTC: the older of the two
    ])  # fmt: skip
    assert [r.id for r in matching_rows(log.snapshot(), Filters(), "newest")] == ["row-000000", "row-000001"]


def test_a_new_row_is_seen_by_the_next_query(tmp_path):
    log = FeedbackLog(tmp_path)
    log.append(make_rows(30))
    assert page_of(log.snapshot(), Filters(), "newest", 1, 25).matching == 30
    log.append(make_rows(1, start=30))
    assert page_of(log.snapshot(), Filters(), "newest", 1, 25).matching == 31


def test_actions_touch_exactly_the_ids_given(tmp_path):
    log = FeedbackLog(tmp_path)
    log.append(make_rows(50))
    assert set_status(log, {"row-000003", "row-000040", "no-such-row"}, "approved", "ann") == 2
    rows, _ = log.read()
    assert {r.id for r in rows if r.status == "approved"} == {"row-000003", "row-000040"}
    assert all(r.reviewer == "ann" and r.reviewed_at for r in rows if r.status == "approved")
    assert delete_rows(log, {"row-000007"}) == 1 and len(log.read()[0]) == 49
    assert statistics(log.read()[0])["by_status"] == {"pending": 47, "approved": 2, "rejected": 0}


def test_given_what_the_admin_saw_an_action_leaves_rows_changed_since_as_they_are(tmp_path):
    from captioner.review import as_seen, changed_since, edit_corrections

    log = FeedbackLog(tmp_path)
    log.append(make_rows(4))
    seen = {row.id: as_seen(row) for row in log.read()[0]}  # the admin's table
    set_status(log, {"row-000001"}, "approved", "bob")  # another session, meanwhile
    edit_corrections(log, {"row-000002": "bob's words"}, "bob")
    delete_rows(log, {"row-000003"})
    ids = {"row-000000", "row-000001", "row-000002", "row-000003"}
    assert changed_since(log.snapshot(), ids, seen) == {
        "row-000001": "now approved, changed by bob", "row-000002": "now pending, changed by bob", "row-000003": "deleted",
    }  # fmt: skip
    assert set_status(log, ids, "rejected", "ann", seen=seen) == 1  # only the row still as ann saw it
    assert edit_corrections(log, {"row-000002": "ann's words"}, "ann", seen=seen) == 0
    assert delete_rows(log, {"row-000001"}, seen=seen) == 0
    now = {row.id: (row.status, row.correction) for row in log.read()[0]}
    assert now["row-000001"][0] == "approved" and now["row-000002"][1] == "bob's words" and now["row-000000"][0] == "rejected"


def test_the_correction_rate_counts_caption_rows_only():
    rows = make_rows(30)  # every tenth row is a Q&A answer, which another model gave
    rows[1] = rows[1]._replace(correction=rows[1].model_output)  # one confirmation, by v1
    figures = statistics(rows)
    assert figures["rows_per_version"] == {"v0": 9, "v1": 9, "v2": 9}  # rows 0, 10, 20 (v0, v1, v2) are Q&A
    assert figures["correction_rate"] == {"v0": 1.0, "v1": 0.8889, "v2": 1.0}


def test_the_selection_is_by_id_and_a_reset_gives_a_fresh_table():
    rows = make_rows(4)
    selection = Selection()
    key = selection.table_key(rows[:2])
    selection.take(rows[:2], [False, True], [rows[0].correction, "typed"])
    assert selection.ids == {"row-000001"} and selection.edits == {"row-000001": "typed"}
    assert selection.table_key(rows[:2]) == key  # the same rows: the same table, so its edits stay with it
    assert selection.table_key(rows[1:3]) != key  # other rows (another page, a reload): another table
    selection.take(rows[2:4], [True, False], [rows[2].correction, rows[3].correction])
    assert selection.ids == {"row-000001", "row-000002"}  # ticks on another page add up
    selection.take(rows[:2], [False, False], [rows[0].correction, rows[1].correction])
    assert selection.ids == {"row-000002"} and selection.edits == {}
    selection.reset()
    assert selection.ids == set() and selection.edits == {}
    assert selection.table_key(rows[:2]) != key  # the same rows after an action: a fresh table, no stale ticks
