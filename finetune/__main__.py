"""`python -m finetune`: see finetune.config.FinetuneConfig for the options."""

import sys

from captioner import runtime

runtime.configure("finetune")  # threads and OpenMP wait policy, before torch loads

from .cli import cli  # noqa: E402

sys.exit(cli())
