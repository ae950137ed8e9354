"""How a run ends without a new version: failed (could not run or finish) or refused (the gate said no)."""


class FinetuneError(RuntimeError):
    """A run that cannot start, fails, or is refused; the message says why. Nothing goes live."""


class Refused(FinetuneError):
    """The run finished but its model did not pass the gate; the live model stays."""


class NotLive(FinetuneError):
    """A version was published but is not live: its activation was refused, failed or cancelled."""

    def __init__(self, message: str, version: str, status: str = "not live"):
        super().__init__(message)
        self.version, self.status = version, status
