"""Progress of a run, for whoever shows it (the CLI's rich progress bar).

Stages report events through `report`: ("planned", n) once the images of a run are
known, ("image", 1) as each is stored. Without a listener nothing happens.
"""

from __future__ import annotations

from collections.abc import Callable

Listener = Callable[[str, int], None]
_listeners: list[Listener] = []


def listen(callback: Listener) -> Callable[[], None]:
    """Register `callback(event, n)`; returns a function that unregisters it."""
    _listeners.append(callback)
    return lambda: _listeners.remove(callback)


def report(event: str, n: int) -> None:
    for callback in list(_listeners):
        callback(event, n)
