"""The exceptions evoked raises on bad input. Each message names the bad value and the fix."""

from __future__ import annotations


class EvokedError(Exception):
    """Base class: an error the user can fix (bad input, bad flag, missing file)."""


class DatasetError(EvokedError):
    """A dataset or manifest that cannot be read as given."""


class LabelError(EvokedError):
    """A label that is unknown or malformed (a category word, a VA value, a distribution)."""


class DecodeError(EvokedError):
    """An image that cannot be read or decoded. `reason` is what is recorded in a feature store."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class ConfigError(EvokedError):
    """A combination of options that cannot work; raised before any heavy work starts."""
