"""The admin page's Versions tab and hot-swapping in AppTest: activate, roll back, a broken or moved version."""

import json

from captioner import registry
from conftest import start_app
from page_text import shown as shown_text
from admin_app import admin, fresh_login_brake  # noqa: F401 (fixtures; the login brake is autouse)
from admin_app import caption_version, click, login, make_version, shown


def test_hot_swap_changes_the_next_captions_version_and_a_broken_one_is_refused(home, monkeypatch):
    monkeypatch.setenv("CAPTIONER_CAPTION_MODEL", "demo")
    make_version(home, "v0001")
    make_version(home, "v0002")
    registry.activate(home / "models", "v0001")
    app = start_app()
    assert caption_version(app) == "v0001"
    registry.activate(home / "models", "v0002")
    app.run()
    assert caption_version(app) == "v0002" and app.text_area[0].value == "a red circle"
    assert "**Captioning:** `v0002 (fine-tuned, from models/)`" in [m.value for m in app.sidebar.markdown]
    make_version(home, "v0003")
    (home / "models" / "v0003" / "model.safetensors").write_bytes(b"not a model")
    registry.activate(home / "models", "v0003")
    app.run()
    warnings = [shown_text(w.value) for w in app.sidebar.warning]
    assert any("v0003" in w and "Still captioning with active (v0002)" in w for w in warnings), warnings
    assert caption_version(app) == "v0002"


def test_versions_tab_activates_and_rolls_back(admin, home):
    make_version(home, "v0001")
    make_version(home, "v0002")
    figures = {"heldout_before": {"exact_match": 0.5, "count": 8}, "heldout_after": {"exact_match": 0.75, "count": 8},
               "new_concepts": {"before": 0.0, "after": 1.0, "count": 2}, "old_knowledge": {"before": 1.0, "after": 1.0, "count": 6}}
    (home / "models" / "v0002" / "metrics.json").write_text(json.dumps(figures))  # fmt: skip
    login(admin)
    assert "default model" in [c.value for c in admin.caption if c.value.startswith("Live:")][0]
    table = admin.dataframe[-1].value.set_index("version")
    shown_figures = ["held-out images", "exact before", "exact after", "new concepts images", "new concepts after", "old knowledge images"]
    assert list(table.loc["v0002", shown_figures]) == [8, 0.5, 0.75, 2, 1.0, 6]
    for name in ("v0001", "v0002"):
        [s for s in admin.selectbox if s.label == "Version"][0].set_value(name).run()
        click(admin, f"Activate {name}")
        assert registry.active_version(home / "models") == name
    click(admin, "Roll back to v0001")  # the button says where it goes
    assert registry.active_version(home / "models") == "v0001"
    click(admin, "Roll back to the default model")  # v0001 went live over the default model: back to that
    assert registry.active_version(home / "models") is None


def test_a_press_made_on_what_another_admin_changed_meanwhile_says_so(admin, home):
    for name in ("v0001", "v0002", "v0003"):
        make_version(home, name)
        registry.activate(home / "models", name)
    login(admin)
    registry.activate(home / "models", "v0001")  # another admin, while this page shows "Roll back to v0002"
    click(admin, "Roll back to v0002")  # it did nothing and said nothing: the button's label had changed
    assert registry.active_version(home / "models") == "v0001"  # theirs is not undone by a press made over v0003
    assert "v0001 went live after this page showed v0003" in shown(admin.error)[0]
    [s for s in admin.selectbox if s.label == "Version"][0].set_value("v0002").run()
    registry.activate(home / "models", "v0003")  # and again, before this admin presses Activate v0002
    click(admin, "Activate v0002")
    assert registry.active_version(home / "models") == "v0002" and "v0002 is live" in shown(admin.success)[0]


def test_versions_tab_with_the_live_folder_gone_or_a_corrupt_pointer(admin, home, tmp_path):
    make_version(home, "v0001")
    make_version(home, "v0002")
    registry.activate(home / "models", "v0001")
    registry.activate(home / "models", "v0002")
    (home / "models" / "v0002").rename(tmp_path / "v0002")  # someone moved the live version away
    login(admin)
    click(admin, "Roll back")
    assert registry.active_version(home / "models") == "v0001" and "v0001 is live" in shown(admin.success)[0]
    (home / "models" / "active.json").write_text('{"version": "v00')
    admin.run()
    errors = shown(admin.error)
    assert any("active.json is corrupt" in e and "keeps serving" in e for e in errors), errors
    assert not [c for c in admin.caption if c.value.startswith("Live:")]  # not guessed as the default model
    click(admin, "Activate v0001")  # activating a version by name repairs it
    assert registry.active_state(home / "models") == registry.ActiveState("v0001")


def test_activate_and_roll_back_show_in_the_tab_that_the_version_is_being_checked(admin, home, monkeypatch):
    from captioner import golive

    make_version(home, "v0001")
    make_version(home, "v0002")
    (home / "models" / "v0002" / "model.safetensors").write_bytes(b"not a model")
    seen_while_checking = []
    real_check = golive.check_folder

    def check_watched(folder, settings, name):  # what the tab shows while the version loads and captions
        from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

        drawn = get_script_run_ctx()._enqueue.__self__.forward_msgs()  # AppTest's runner: this run's messages so far
        seen_while_checking.extend(m.delta.add_block.expandable.label for m in drawn if m.delta.add_block.expandable.label)
        return real_check(folder, settings, name)

    monkeypatch.setattr(golive, "check_folder", check_watched)
    login(admin)
    click(admin, "Activate v0002")  # the newest is picked first: a broken one, refused before it is loaded
    assert [(s.label, s.state) for s in admin.status] == [("v0002 was not made live", "error")]
    assert registry.active_version(home / "models") is None
    assert "cannot go live: v0002/model.safetensors is truncated or corrupt" in shown(admin.error)[0]
    [s for s in admin.selectbox if s.label == "Version"][0].set_value("v0001").run()
    assert not admin.status  # said once, as the notes are
    click(admin, "Activate v0001")
    assert seen_while_checking == ["Checking v0001: loading it and captioning the check set…"]
    assert [(s.label, s.state) for s in admin.status] == [("v0001 passed its check", "complete")]
    assert registry.active_version(home / "models") == "v0001" and "v0001 is live" in shown(admin.success)[0]
    assert any(c.value == "Live: v0001" for c in admin.caption)  # the tab, drawn after the check, shows it live
    click(admin, "Roll back to the default model")
    assert [(s.label, s.state) for s in admin.status] == [("Back to the default model", "complete")]
    assert registry.active_version(home / "models") is None
