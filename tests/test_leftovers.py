"""What a killed writer leaves behind is removed at the next write of its kind, and only when its writer is gone."""

from captioner import registry


def test_a_killed_activations_temp_file_goes_at_the_next_activation(home, capsys):
    from captioner.__main__ import main

    models = home / "models"
    (models / "v0001").mkdir(parents=True)
    (models / "v0001" / "config.json").write_text("{}")
    registry.activate(models, "v0001")
    left = models / ".active.json.k9x2ab.tmp"  # `models activate` killed between writing its temp file and the rename
    left.write_text('{"version": "v0')
    assert main(["models", "rollback"]) == 0  # back to the default model: no version to check, no model loaded
    assert not left.exists() and sorted(p.name for p in models.iterdir()) == [".registry.lock", "active.json", "v0001"]
    assert registry.active_state(models).version is None and "live: the default model" in capsys.readouterr().err
