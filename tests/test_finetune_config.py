"""FinetuneConfig built in Python or from a config file (trl-style `main(cfg)`): wrong types are refused clearly."""

from pathlib import Path

import pytest
import yaml

from finetune import FinetuneConfig, FinetuneError, main


def test_a_yaml_config_whose_learning_rate_pyyaml_read_as_text_is_refused_naming_it(tmp_path):
    options = yaml.safe_load("lr: 2e-3\nepochs: 2\nseed: 1\n")  # PyYAML reads 2e-3 (no dot) as the text '2e-3'
    with pytest.raises(FinetuneError, match=r"lr \(--lr\) must be a number, not '2e-3' \(str\).*write 2\.0e-3"):
        main(FinetuneConfig(**options, home=str(tmp_path)))
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize("changes, said", [
    ({"activate": "no"}, "activate must be true or false, not 'no'"),  # a non-empty string would have been true
    ({"epochs": "3"}, "epochs (--epochs) must be a whole number, not '3'"),
    ({"lora_r": 8.5}, "lora_r (--lora-r) must be a whole number, not 8.5"),
    ({"seed": True}, "seed (--seed) must be a whole number, not True"),
])  # fmt: skip
def test_an_option_of_the_wrong_type_is_one_error_naming_it(changes, said):
    with pytest.raises(ValueError) as raised:
        FinetuneConfig(**changes).validate()
    assert said in str(raised.value)


def test_paths_and_whole_numbers_where_text_and_numbers_are_wanted_are_taken_as_meant(tmp_path):
    cfg = FinetuneConfig(home=Path(tmp_path), base=Path("models/v0001"), lr=1e-3, distill=1).validate()
    assert (cfg.home, cfg.base, cfg.distill) == (str(tmp_path), "models/v0001", 1)  # train_args.json holds text


def test_dry_run_says_what_would_be_trained_and_writes_nothing(home):
    import subprocess
    import sys

    from conftest import ROOT, child_env
    from test_finetune import log_rows

    log_rows(home, n=24, wrong=True)
    done = subprocess.run([sys.executable, "-m", "finetune", "--dry-run", "--min-rows", "5", "--seed", "3"],
                          capture_output=True, text=True, cwd=ROOT, env=child_env(), timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = done.stdout
    assert "24 images with an approved caption: 24 corrections, 0 confirmations" in said and "seed 3" in said
    assert "would publish models/v0001 and make it live" in said and "nothing was loaded, trained or written" in said
    assert not (home / "models").exists()


def test_help_lists_dry_run_and_shows_no_empty_defaults(capsys):
    from finetune.config import parse_args

    assert parse_args(["--dry-run"]).dry_run and not parse_args([]).dry_run
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--dry-run" in shown and "(default: )" not in shown
