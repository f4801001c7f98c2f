"""One registry type for every pluggable kind (backbones, regressors, dataset kinds, sources,
export formats, index kinds): register, get, list, help, did-you-mean and one error::

    MODELS = Registry("model")

    @MODELS.register("ridge", help="ridge regression")
    def ridge(**params): ...

    MODELS.add("svr", "evoked.regress.svr:svr", help="RBF SVR")  # imported on first use

A built-in whose module pulls in torch or scikit-learn is added by its ``"module:attr"`` path, so
listing names and help (the CLI's choices) imports nothing heavy. Registries of cheap modules name
them in `builtins`: they are imported, and so register themselves, when the registry is first read.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from evoked.errors import ConfigError, EvokedError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered name: its object (or the ``"module:attr"`` that defines it), help and extras."""

    name: str
    target: T | str
    help: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def usage(self) -> str:
        """How the name is written on the command line (``tv:NAME`` for a family)."""
        return self.meta.get("usage", self.name)

    def load(self) -> T:
        if not isinstance(self.target, str):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry(Generic[T]):
    """Names of one `kind` (e.g. "model") -> entries; an unknown name raises `error`, ending with `fix`."""

    def __init__(
        self,
        kind: str,
        *,
        builtins: Sequence[str] = (),
        error: type[EvokedError] = ConfigError,
        fix: str = "",
    ):
        self.kind = kind
        self.error = error
        self.fix = fix
        self._builtins = tuple(builtins)
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, target: T | str, *, help: str = "", **meta: Any) -> None:
        """Register `target` (or its ``"module:attr"`` path, imported on first use) under `name`."""
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, help, meta)

    def register(
        self, name: str, *, help: str = "", aliases: Sequence[str] = (), **meta: Any
    ) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (and `aliases`)."""

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                self.add(key, obj, help=help, **({**meta, "alias_of": name} if key != name else meta))
            return obj

        return deco

    def _load_builtins(self) -> None:
        while self._builtins:  # a builtin module may read this registry while it registers
            module, self._builtins = self._builtins[0], self._builtins[1:]
            importlib.import_module(module)

    def __iter__(self) -> Iterator[Entry[T]]:
        self._load_builtins()
        return iter(list(self._entries.values()))

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return [e.name for e in self]

    def help(self) -> dict[str, str]:
        """Usage -> one-line help, for ``--help`` texts and listings."""
        return {e.usage: e.help for e in self}

    def describe(self) -> str:
        """The names as a CLI help text shows them: ``ridge, svr, tv:NAME``."""
        return ", ".join(e.usage for e in self)

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def get(self, name: str) -> Entry[T]:
        """The entry of `name`; an unknown name raises `error` with close matches and all names."""
        self._load_builtins()
        entry = self._entries.get(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def load(self, name: str) -> T:
        return self.get(name).load()

    def unknown(self, name: str) -> EvokedError:
        """The one error for a name this registry does not have."""
        close = difflib.get_close_matches(name, self.names(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return self.error(
            f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {self.describe()}; choose one of them."
            + (f" {self.fix}" if self.fix else "")
        )
