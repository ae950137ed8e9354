"""`captioner models list|activate` on version folders that are whole, half-written or empty: what a script reads."""

import json
import shutil

from conftest import run_cli


def version_folders(home, tiny_blip_dir):
    """v0001 whole (a checkpoint with its metrics), v0002 copied in without its weights, v0003 an empty folder."""
    models = home / "models"
    shutil.copytree(tiny_blip_dir, models / "v0001")
    (models / "v0001" / "metrics.json").write_text(json.dumps({"heldout_before": {"exact_match": 0.5, "count": 4},
                                                               "heldout_after": {"exact_match": 0.75, "count": 4}}))  # fmt: skip
    (models / "v0001" / "train_args.json").write_text(json.dumps({"created": "2026-01-01T00:00:00+00:00", "rows_used": 30}))
    (models / "v0002").mkdir()
    shutil.copy(tiny_blip_dir / "config.json", models / "v0002")
    (models / "v0003").mkdir()


def test_models_list_json_gives_each_version_its_scores_and_what_keeps_it_from_going_live(home, tiny_blip_dir):
    version_folders(home, tiny_blip_dir)
    done = run_cli("models", "list", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert listed["live"] is None and listed["serving"] is None and listed["serving_model"]
    first, half, empty = listed["versions"]
    assert (first["version"], first["problem"], first["rows_used"]) == ("v0001", None, 30)
    assert first["heldout_after"]["exact_match"] == 0.75 and first["serving"] is False
    assert half["version"] == "v0002" and "holds no weights" in half["problem"]
    assert empty["version"] == "v0003" and "holds no config.json" in empty["problem"]
    table = run_cli("models", "list").stdout
    assert "v0002" in table and "(cannot go live: v0002 holds no weights" in table
    assert "(cannot go live" not in next(line for line in table.splitlines() if "v0001" in line)


def test_activating_a_half_written_version_says_what_it_lacks_not_that_it_does_not_exist(home, tiny_blip_dir):
    version_folders(home, tiny_blip_dir)
    for version, lacks in (("v0002", "holds no weights"), ("v0003", "holds no config.json")):
        done = run_cli("models", "activate", version)
        assert done.returncode == 2 and f"{version!r} cannot go live: {version} {lacks}" in done.stderr, done.stderr
        assert "does not exist" not in done.stderr and "Traceback" not in done.stderr
    assert "does not exist" in run_cli("models", "activate", "v0009").stderr
    assert not (home / "models" / "active.json").exists()
