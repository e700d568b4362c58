"""The one registry of kinds that score sources, masks and input providers share.

A kind is a class with a ``kind`` name (and, where bare specs are allowed, a ``claims(spec, pool)``
classmethod). A spec ``KIND:REST`` names its kind; a bare spec goes to the first kind, in
registration order, that claims it.
"""

from __future__ import annotations

from typing import Any


class KindRegistry(dict):
    """``kind name -> class``, in registration order; ``what`` names the kinds in messages."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, cls: type) -> type:
        """Class decorator adding ``cls`` under ``cls.kind`` (a name may be registered once)."""
        if cls.kind in self:
            raise ValueError(f"{self.what} {cls.kind!r} is already registered")
        self[cls.kind] = cls
        return cls

    def find(self, spec: str, pool: Any) -> tuple[type, str] | None:
        """The class ``spec`` names with the rest of the spec, or the first that claims the bare
        spec with the whole spec; None when none does."""
        kind, sep, rest = spec.partition(":")
        if sep and kind in self:
            return self[kind], rest
        for cls in self.values():
            if cls.claims(spec, pool):
                return cls, spec
        return None

    def describe(self) -> str:
        """``kind: description; ...`` for messages that list the kinds."""
        return "; ".join(f"{k}: {c.description}" for k, c in self.items())
