"""`python -m finetune` and the `captioner-finetune` command: see finetune.config.FinetuneConfig for the options."""

import sys

from captioner import runtime

runtime.configure("finetune")  # threads and OpenMP wait policy, before torch loads

from .cli import cli  # noqa: E402


def main() -> int:
    """The console script's entry: the exit status of one fine-tuning run."""
    return cli()


if __name__ == "__main__":
    sys.exit(main())
