"""How a run ends without a new version: failed (could not run or finish) or refused (the gate said no)."""


class FinetuneError(RuntimeError):
    """A run that cannot start, fails, or is refused; the message says why. Nothing goes live."""


class Refused(FinetuneError):
    """The run finished but its model did not pass the gate; the live model stays."""
