"""`python -m captioner ...`: the command line (commands in captioner/cli, listed in README.md; layout in ARCHITECTURE.md)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
