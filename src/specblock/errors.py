"""User-facing errors: each carries one clear sentence, printed by the CLI without a traceback."""


class SpecBlockError(Exception):
    """Base class for every error a user can cause (bad name, bad file, bad setting)."""


class UnknownModelError(SpecBlockError):
    """A model name that is neither a known registry name nor a model directory."""


class UnsupportedModelError(SpecBlockError):
    """A model directory whose architecture or settings the engine does not implement."""


class DownloadError(SpecBlockError):
    """A download that failed, was truncated, or whose checksum did not match."""


class InvalidSettingError(SpecBlockError):
    """A generation setting outside its valid range (temperature, top-p, budget, ...)."""


class ContextLengthError(SpecBlockError):
    """A prompt that does not fit in the target's context window."""
