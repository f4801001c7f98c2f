"""A query point of the valence-arousal plane, checked alike for `evoked search --va` and the web API."""

from __future__ import annotations

from evoked.data.va_range import DEFAULT_VA_RANGE
from evoked.errors import ConfigError


def va_point(valence: float | str, arousal: float | str) -> tuple[float, float]:
    """(valence, arousal) as floats, both finite and on the 1..9 rating scale; else a ConfigError."""
    lo, hi = DEFAULT_VA_RANGE
    point = []
    for name, raw in (("valence", valence), ("arousal", arousal)):
        try:
            value = float(raw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{name} {raw!r} is not a number; give a point such as 7,3") from e
        if not lo <= value <= hi:  # NaN and infinities fail too
            raise ConfigError(f"{name} {raw!r} is not on the {lo:g}..{hi:g} valence/arousal scale")
        point.append(value)
    return point[0], point[1]


def parse_va_point(text: str, flag: str = "--va") -> tuple[float, float]:
    """``"7,3"`` -> (7.0, 3.0), checked by `va_point`; an error names `flag`, the option it came from."""
    parts = text.split(",")
    if len(parts) != 2:
        raise ConfigError(f"{flag} {text!r} is not VALENCE,AROUSAL; give a point such as 7,3")
    try:
        return va_point(*parts)
    except ConfigError as e:
        raise ConfigError(f"{flag} {text!r}: {e}") from e
