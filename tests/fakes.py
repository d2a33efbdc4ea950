"""Test doubles around the real offline providers: count calls and script answers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any


class Spy:
    """Wraps a provider: counts calls per method; a scripted method first answers from its
    script (an exception in it is raised, anything else returned), then calls through."""

    def __init__(self, inner: Any, **scripts: Iterable[Any]) -> None:
        self._inner = inner
        self._scripts: dict[str, Iterator[Any]] = {k: iter(v) for k, v in scripts.items()}
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            scripted = next(self._scripts.get(name, iter(())), _NOTHING)
            if isinstance(scripted, BaseException):
                raise scripted
            return attribute(*args, **kwargs) if scripted is _NOTHING else scripted

        return call


_NOTHING = object()


class Crash(BaseException):
    """Stands for the process dying mid-step: nothing in the engine catches a BaseException."""
