"""The admin page's Export tab in AppTest: an export in its own thread, its failures, two at once."""

from captioner.feedback import FeedbackLog
from conftest import start_app
from admin_app import admin, fresh_login_brake  # noqa: F401 (fixtures; the login brake is autouse)
from admin_app import click, finish_export, login, rows, shown


def test_an_export_goes_on_when_the_page_reruns_meanwhile(admin, home, monkeypatch):
    import threading

    from captioner import export as export_module
    from captioner.review import set_status

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")
    gate, copy = threading.Event(), export_module.shutil.copyfile
    monkeypatch.setattr(export_module.shutil, "copyfile", lambda *args: (gate.wait(60), copy(*args))[1])
    login(admin)
    click(admin, "Export approved rows")
    assert [p.text for p in admin.get("progress")] == ["Reading the approved rows…"]
    [t for t in admin.text_input if t.label == "Text contains"][0].set_value("circle").run()  # the admin goes on
    assert not admin.exception, admin.exception  # reviewing while it exports: the page's script is rerun
    assert [b for b in admin.button if b.label == "Export approved rows"][0].disabled  # one at a time
    gate.set()
    finish_export(admin)
    assert any("Exported 5 approved rows" in s.value for s in admin.success)
    exported = next((home / "data" / "exports").glob("*-hf"))
    assert len(list(exported.rglob("*.png"))) == 5 and exported.with_name(exported.name + ".zip").is_file()


def test_an_export_that_fails_unexpectedly_in_its_thread_says_so_on_the_page(admin, home, monkeypatch):
    from captioner import export as export_module
    from captioner.review import set_status

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")

    def broken(*args, **kwargs):
        raise ValueError("a column pyarrow cannot type")

    monkeypatch.setattr(export_module.pq, "write_table", broken)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the server log's traceback, not this test's
    click(login(admin), "Export approved rows")
    finish_export(admin)
    assert "The export failed: ValueError: a column pyarrow cannot type" in shown(admin.error)
    assert list((home / "data" / "exports").iterdir()) == []  # neither its staging folder nor the one made for it


def test_two_exports_in_the_same_second_from_two_sessions_both_succeed(admin, home, monkeypatch):
    import time

    from captioner.review import set_status

    monkeypatch.setattr(time, "strftime", lambda *_: "20261207-190923")  # both presses in the same second

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")
    other = login(start_app("pages/admin.py"))  # a second admin
    click(login(admin), "Export approved rows")
    click(other, "Export approved rows")
    finish_export(admin)
    finish_export(other)
    for app in (admin, other):
        assert any("Exported 5 approved rows" in s.value for s in app.success), shown(app.error)
    folders = sorted(p for p in (home / "data" / "exports").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(len(list(f.rglob("*.png"))) == 5 and f.with_name(f.name + ".zip").is_file() for f in folders)


def test_export_approved_rows_from_the_page(admin, home, tmp_path):
    from captioner.review import set_status

    log = FeedbackLog(home / "data")
    good = rows(home)
    (home / "outside.png").write_bytes((home / "data" / good[0].image_path).read_bytes())
    (log.images_dir / "link.png").symlink_to(home / "outside.png")
    log.append([good[0]._replace(id="leads-outside", image_path="images/link.png", correction="**bold** [x](https:evil.example)")])
    set_status(log, {r.id for r in rows(home)}, "approved", "test")
    login(admin)
    admin.radio[0].set_value("hf").run()
    click(admin, "Export approved rows")
    finish_export(admin)
    assert any("Exported 5 approved rows" in s.value for s in admin.success)
    assert [w.value for w in admin.warning] == ["1 approved row(s) were left out:"]
    assert any("leads-outside" in c.value and "outside" in c.value for c in admin.code)
    exported = next((home / "data" / "exports").glob("*-hf"))
    from datasets import load_dataset

    captions = load_dataset(str(exported), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(captions) == 4 and set(captions["task"]) == {"caption"}
    assert load_dataset(str(exported), "qa", split="train", cache_dir=str(tmp_path / "cache"))["text"] == ["red"]


def test_the_next_export_removes_what_an_export_killed_midway_left_and_says_so(admin, home):
    from captioner.review import set_status

    set_status(FeedbackLog(home / "data"), {r.id for r in rows(home)}, "approved", "test")
    exports = home / "data" / "exports"
    (exports / ".20261207-190923-hf.0123456789ab.partial" / "captions" / "train").mkdir(parents=True)  # the app was
    (exports / ".20261207-190923-hf.0123456789ab.partial.lock").touch()  # killed while it copied: its lock went with it
    (exports / "20261207-190923-hf").mkdir()  # the folder made for that export, empty
    click(login(admin), "Export approved rows")
    finish_export(admin)
    assert any("Exported 5 approved rows" in s.value for s in admin.success)
    assert [note for note in shown(admin.info) if "stopped midway" in note] == [
        f"Removed what an export stopped midway had left in {exports}: .20261207-190923-hf.0123456789ab.partial, "
        "20261207-190923-hf"
    ]
    assert [p.name for p in exports.iterdir() if "20261207-190923" in p.name] == []
