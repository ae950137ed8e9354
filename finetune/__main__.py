"""`python -m finetune`: see finetune.config.FinetuneConfig for the options."""

import sys

from .run import cli

sys.exit(cli())
