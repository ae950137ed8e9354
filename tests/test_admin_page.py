"""The admin page in AppTest: the password and its brake, the statistics, plain notes (each tab has its own file)."""

from admin_app import admin, fresh_login_brake  # noqa: F401 (fixtures; the login brake is autouse)
from admin_app import login


def test_a_wrong_password_gets_no_access_and_no_hint(admin):
    login(admin, "correct horse!")
    assert [e.value for e in admin.error] == ["Wrong password."]
    assert not admin.tabs and not admin.data_editor


def test_repeated_wrong_passwords_are_braked_even_for_the_right_one(admin):
    for _ in range(3):
        login(admin, "wrong")
    assert "Wait 2 s" in admin.error[0].value
    login(admin)  # the right password, too soon: not even checked
    assert "not checked" in admin.error[0].value and not admin.tabs


def test_statistics_and_filters(admin, home):
    login(admin)
    assert [m.value for m in admin.metric] == ["5", "0", "0"]
    admin.multiselect[1].set_value(["qa"]).run()
    assert list(admin.data_editor[0].value["task"]) == ["qa"]
    admin.text_input[1].set_value("blob").run()  # text filter on top of the task filter
    assert len(admin.data_editor[0].value) == 0


def test_a_note_built_from_data_is_escaped_not_rendered():
    from pages.ui.text import plain

    assert plain("**BOLD** [click](https:evil.example) `x` <b>") == (
        "\\*\\*BOLD\\*\\* \\[click\\]\\(https\\:evil\\.example\\) \\`x\\` \\<b\\>"
    )
