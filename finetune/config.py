"""The training run's settings: one dataclass, parsed from the command line (trl-style: config -> main(cfg))."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

MAX_SEED = 2**63 - 1  # torch takes 64-bit seeds, and training also seeds a generator with seed + 1
MAX_BATCH = 256  # rows a step: a BLIP-base step of 256 already needs tens of GiB; more only runs out of memory
MAX_RANK = 256  # a LoRA rank past a few dozen teaches a captioner nothing more (the admin page's limit too)
LONGEST = 10  # --epochs may train on at most this many times the steps of the automatic choice (epochs 0)


def option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; the defaults are the recipe the demo-world learning test passes with."""

    min_rows: int = option(20, "refuse to train on fewer approved caption rows than this")
    epochs: int = option(0, "passes over the training rows; 0 = about 4,000 samples, and at least 3 passes; at most 10 "
                         "times the steps of 0")
    lr: float = option(2e-3, "AdamW learning rate of the LoRA and token parameters")
    lora_r: int = option(16, "LoRA rank, 1 to 256 and at most the width of the model's layers (128 in the demo model)")
    lora_alpha: int = option(0, "LoRA alpha; 0 = twice the rank")
    lora_dropout: float = option(0.0, "dropout on the LoRA path (each layer with it keeps another copy of its input)")
    lora_targets: str = option("text", "where LoRA adapters go: text (the caption decoder) or all (the vision tower's attention too)")
    old_share: float = option(0.5, "share of each batch drawn from what the live model already knows (confirmations, regression set)")
    distill: float = option(
        1.0, "weight of self-distillation: keep the new model's word probabilities close to the live model's on old rows"
    )
    regression_images: int = option(
        512, "at most this many stored, uncorrected images the live model captions confidently join as old knowledge"
    )
    max_forgetting: float = option(
        0.02, "refuse a model whose held-out old-knowledge exact match drops by more than this (0.02 = 2 points)"
    )
    batch_size: int = option(16, "rows per optimisation step, 1 to 256")
    heldout_fraction: float = option(
        0.15, "share of each group's images (a correction concept, confirmations, regression set; chosen by hash) kept "
        "out of training to judge the result"
    )
    seed: int = option(0, "random seed")
    base: str = option("", "model spec to start from; default: the live model")
    # a bool that defaults True: its help is its --no-NAME flag's, what turning it off does
    activate: bool = option(True, "only publish the new version (by default it is made live when it passes)")
    recoloured_views: int = option(
        6, "views of each correction that teaches no colour word, its picture turned to other hues and captioned by "
        "the live model's own words up to the taught ones, which alone are learned there (0 = off)"
    )
    augment: bool = option(True, "train on the pictures as they are (by default they are flipped, zoomed and shifted at random)")
    home: str = option("", "CAPTIONER_HOME to read feedback from and publish into; default: the environment's")
    progress_file: str = option("", "also write progress as JSON lines here (the admin page follows it)")
    dry_run: bool = option(False, "say what would be trained (rows by kind and concept, held out, steps, base, the "
                           "version it would publish) and stop: nothing is loaded, trained or written")

    @property
    def alpha(self) -> int:
        return self.lora_alpha or 2 * self.lora_r

    def steps_for(self, rows: int) -> int:
        """Optimisation steps: --epochs passes over the rows, or (0) about 4,000 samples and at least 3 passes.
        Few rows still get all 4,000: on the demo world 3 corrections learned more, and forgot less, from
        250 steps than from 90 (bench/learning_loop.py)."""
        per_pass = -(-max(rows, 1) // self.batch_size)
        return self.epochs * per_pass if self.epochs else max(-(-4000 // self.batch_size), 3 * per_pass)

    def validate(self) -> "FinetuneConfig":
        """Every option out of range, named in one ValueError, before any data is read or anything written."""
        self._check_types()
        floats = [item.name for item in fields(self) if str(item.type) == "float"]
        not_finite = [name for name in floats if not math.isfinite(getattr(self, name))]
        problems = [f"{_flag(name)} must be a finite number, not {getattr(self, name)}" for name in not_finite]

        def need(name: str, ok: bool, rule: str) -> None:
            if name not in not_finite and not ok:  # NaN fails every comparison: it was named once, above
                problems.append(f"{_flag(name)} must be {rule}, not {getattr(self, name)!r}")

        need("min_rows", self.min_rows >= 1, "at least 1")
        need("epochs", self.epochs >= 0, "0 or more")
        need("batch_size", 1 <= self.batch_size <= MAX_BATCH, f"between 1 and {MAX_BATCH}")
        if self.batch_size == 1 and "old_share" not in not_finite and self.old_share > 0:  # each batch mixes new and old
            problems.append(f"--batch-size 1 cannot hold both new and old rows (--old-share {self.old_share:g}): "
                            "use 2 or more, or --old-share 0")  # fmt: skip
        need("lr", 0 < self.lr < 1, "between 0 and 1")
        need("lora_r", 1 <= self.lora_r <= MAX_RANK, f"between 1 and {MAX_RANK}")
        need("lora_alpha", self.lora_alpha >= 0, "0 (twice the rank) or more")
        need("lora_dropout", 0 <= self.lora_dropout < 1, "in [0, 1)")
        need("lora_targets", self.lora_targets in ("text", "all"), "text or all")
        need("old_share", 0 <= self.old_share < 1, "in [0, 1)")
        need("distill", self.distill >= 0, "0 or more")
        need("regression_images", self.regression_images >= 0, "0 or more")
        need("max_forgetting", 0 <= self.max_forgetting <= 1, "in [0, 1]")
        need("heldout_fraction", 0 <= self.heldout_fraction < 1, "in [0, 1)")
        need("seed", 0 <= self.seed <= MAX_SEED, f"between 0 and {MAX_SEED}")
        need("recoloured_views", self.recoloured_views >= 0, "0 or more")
        if self.home and not Path(self.home).is_dir():
            problems.append(f"--home {self.home} is not a folder")
        if problems:
            raise ValueError("; ".join(problems))
        return self


    def _check_types(self) -> None:
        """A ValueError naming every option of the wrong type: a config built in Python or from a file
        (`FinetuneConfig(**yaml.safe_load(...))`, where PyYAML reads `lr: 2e-3` as text and `activate: no` as False
        but `activate: "no"` as text) gets one clear refusal instead of a TypeError, or a string "no" taken as true."""
        problems = []
        for item in fields(self):
            value, kind = getattr(self, item.name), str(item.type)
            if kind == "str" and isinstance(value, os.PathLike):  # a Path for --home or --base is what was meant
                value = os.fspath(value)
                setattr(self, item.name, value)
            wanted = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}[kind]
            if not isinstance(value, wanted) or (isinstance(value, bool) and kind != "bool"):
                hint = " (YAML reads 2e-3 as text: write 2.0e-3)" if kind == "float" and isinstance(value, str) else ""
                what = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}[kind]
                named = item.name if kind == "bool" else f"{item.name} ({_flag(item.name)})"  # a bool's flag is --no-NAME
                problems.append(f"{named} must be {what}, not {value!r} ({type(value).__name__}){hint}")
        if problems:
            raise ValueError("; ".join(problems))

    def check_length(self, rows: int, what: str = "images with an approved caption") -> None:
        """A ValueError naming --epochs when it would train on these rows for more than LONGEST times the steps the
        automatic choice takes (--epochs 1000 over 3,000 rows: 188,000 steps, over 6 hours of the demo model on 2 cores)."""
        automatic, steps = replace(self, epochs=0).steps_for(rows), self.steps_for(rows)
        if steps > LONGEST * automatic:
            most = LONGEST * automatic // -(-max(rows, 1) // self.batch_size)
            raise ValueError(f"--epochs {self.epochs} over {rows} {what} would train {steps:,} steps, more than "
                             f"{LONGEST} times the {automatic:,} of --epochs 0 (automatic): use at most --epochs {most}")  # fmt: skip


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_args(argv: list[str] | None = None) -> FinetuneConfig:
    """The command line, generated from FinetuneConfig's fields (a bool that defaults True gets --no-NAME)."""
    parser = argparse.ArgumentParser(prog="python -m finetune", description=FinetuneConfig.__doc__)
    for item in fields(FinetuneConfig):
        flag, help_text = "--" + item.name.replace("_", "-"), item.metadata.get("help", "")
        default = item.default if item.default is not MISSING else None
        if item.type in ("bool", bool) and default:
            negative = "--no-" + item.name.replace("_", "-")
            parser.add_argument(negative, dest=item.name, action="store_false", help=help_text)
            parser.set_defaults(**{item.name: default})
        elif item.type in ("bool", bool):
            parser.add_argument(flag, dest=item.name, action="store_true", help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[str(item.type)]
            shown = f" (default: {default})" if default != "" else ""  # an empty text's default is said in its help
            parser.add_argument(flag, type=kind, default=default, help=help_text + shown)
    return FinetuneConfig(**vars(parser.parse_args(argv)))


def resolve_home(cfg: FinetuneConfig):
    """The Settings the run works in (cfg.home overrides CAPTIONER_HOME)."""
    import os

    from captioner.settings import Settings

    env = dict(os.environ)
    if cfg.home:
        env["CAPTIONER_HOME"] = str(Path(cfg.home))
    return Settings.from_env(env)
