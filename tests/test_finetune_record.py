"""What a published version records so that a run can be rerun and told apart: the data snapshot, the software."""

import json

import torch

from conftest import SUITE_DEVICE
from finetune import main
from test_finetune import log_rows, quick, tiny_home  # noqa: F401  (tiny_home is a fixture)


def test_train_args_names_the_feedback_rows_images_and_library_versions_it_trained_with(tiny_home):  # noqa: F811
    log = log_rows(tiny_home, n=12)
    folder = main(quick(tiny_home, seed=5))
    args = json.loads((folder / "train_args.json").read_text())
    rows, _ = log.read()
    assert args["seed"] == 5
    assert args["data"]["feedback_rows"] == sorted(row.id for row in rows)
    assert len(args["data"]["fingerprint"]) == 64 and args["data"]["heldout_images"] == []
    env = args["environment"]
    assert env["torch"] == torch.__version__
    assert env["transformers"] and env["peft"] and env["python"] and env["device"].startswith(SUITE_DEVICE.split(":")[0])
    assert "seed 5" in (folder / "README.md").read_text()
    log_rows(tiny_home, n=2, seed=11)  # two more approved rows: the next run's data differs, and says so
    again = json.loads((main(quick(tiny_home, seed=5)) / "train_args.json").read_text())
    assert len(again["data"]["feedback_rows"]) == 14
    assert again["data"]["fingerprint"] != args["data"]["fingerprint"]
