"""Sign-in throttling: after a few failed attempts, a name and a client address must wait,
twice as long after each further failure (capped), before the password is even checked."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class LoginThrottle:
    def __init__(self, free_per_name: int = 5, free_per_address: int = 20, first_wait: float = 1.0,
                 max_wait: float = 900.0, remembered: int = 10_000):
        self.free = {"name": free_per_name, "address": free_per_address}
        self.first_wait, self.max_wait, self.remembered = first_wait, max_wait, remembered
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()  # -> (count, last)
        self._lock = threading.Lock()

    def wait_seconds(self, name: str, address: str) -> float:
        """How long this attempt must wait; 0 when it may go ahead."""
        now = time.monotonic()
        with self._lock:
            return max(self._wait(("name", name), now), self._wait(("address", address), now))

    def _wait(self, key: tuple[str, str], now: float) -> float:
        count, last = self._failures.get(key, (0, now))
        over = count - self.free[key[0]]
        if over < 0:
            return 0.0
        return max(0.0, last + min(self.max_wait, self.first_wait * 2**over) - now)

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (("name", name), ("address", address)):
                count, _ = self._failures.pop(key, (0, now))
                self._failures[key] = (count + 1, now)
            while len(self._failures) > self.remembered:  # a flood of names cannot grow this forever
                self._failures.popitem(last=False)

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._failures.pop(("name", name), None)
            self._failures.pop(("address", address), None)
