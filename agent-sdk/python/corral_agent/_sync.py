"""What the agent's threads share, on `_thread` alone (the documented low-level module the
interpreter has loaded before the agent's first line): a flag, a queue of events, background
threads. `threading` and `queue` do the same, but importing them costs an agent's start more
than the rest of the package. The threads are daemons: they never keep the process alive."""

from __future__ import annotations

import _thread

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, List

    from ._types import Event


def spawn(target: Callable[[], None]) -> None:
    """Run `target` on a thread of its own."""
    _thread.start_new_thread(target, ())


class Flag:
    """A flag set once, that threads wait for (as `threading.Event`)."""

    def __init__(self) -> None:
        self._mutex = _thread.allocate_lock()
        self._gate = _thread.allocate_lock()
        self._gate.acquire()  # held while the flag is down
        self._set = False

    def set(self) -> None:
        with self._mutex:
            if not self._set:
                self._set = True
                self._gate.release()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float) -> bool:
        """Whether the flag is set, waiting at most `timeout` seconds for it."""
        if self._gate.acquire(True, max(timeout, 0.0)):
            self._gate.release()  # let the next waiter through
            return True
        return self._set


class Events:
    """A queue of events, many producers and consumers (as `queue.Queue`, unbounded: what it
    holds is bounded by what the supervisor sends, which it bounds)."""

    def __init__(self) -> None:
        self._mutex = _thread.allocate_lock()
        self._items: List[Event] = []
        self._ready = _thread.allocate_lock()
        self._ready.acquire()  # released while there may be an item to take

    def put(self, item: Event) -> None:
        with self._mutex:
            self._items.append(item)
            if self._ready.locked():
                self._ready.release()

    def get(self) -> Event:
        """The oldest event, waiting for one."""
        while True:
            with self._mutex:
                if self._items:
                    item = self._items.pop(0)
                    if self._items and self._ready.locked():
                        self._ready.release()  # wake the next consumer
                    return item
            self._ready.acquire()
