"""The server's loaded models, shared by every session: a model is loaded once, not once per viewer.

Why a module of its own: what stays in memory, and when a model may be dropped, is the server's memory policy; the
job runner (`diet.jobs`) only marks a model busy through `hold` while a job uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from diet.errors import DietError


class SharedModels:
    """The server's loaded models, by key, shared by every session (a model is loaded once, not once per viewer).

    A model used by a running job is never dropped under it (`hold`). When a new model does not fit next to the
    loaded ones (`capacity` models at most), the idle ones are dropped first — `would_replace` says which, so the
    page can say so before it loads — and if every loaded model is busy, the load is refused with a message."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, capacity)
        self._lock = threading.RLock()
        self._models: dict[Any, Any] = {}
        self._busy: dict[Any, int] = {}
        self._loading: dict[Any, threading.Lock] = {}

    def loaded(self) -> list:
        with self._lock:
            return list(self._models)

    def would_replace(self, key) -> list:
        """Keys of the loaded models that loading `key` would drop (idle ones, oldest first)."""
        with self._lock:
            if key in self._models or len(self._models) < self.capacity:
                return []
            idle = [k for k in self._models if not self._busy.get(k)]
            return idle[: len(self._models) - self.capacity + 1]

    def get(self, key, load: Callable[[], Any], describe: Callable[[Any], str] = str):
        """The model of `key`, loaded once (a second session asking meanwhile waits for the same load)."""
        with self._lock:
            if key in self._models:
                return self._models[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._models:
                    return self._models[key]
                drop = self.would_replace(key)
                if len(self._models) - len(drop) >= self.capacity:
                    busy = ", ".join(describe(k) for k in self._models if self._busy.get(k))
                    raise DietError(f"cannot load {describe(key)} now: memory holds {self.capacity} model(s) and "
                                    f"{busy} is in use by a running job; try again when it has finished")
                for k in drop:
                    del self._models[k]
            model = load()
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
            return model

    def hold(self, key) -> Callable[[], None]:
        """Mark `key` in use (by a job) until the returned release function is called."""
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        done = threading.Event()

        def release() -> None:
            if done.is_set():
                return
            done.set()
            with self._lock:
                self._busy[key] -= 1
                if not self._busy[key]:
                    del self._busy[key]

        return release

    def drop_idle(self) -> list:
        """Drop every model no job uses (frees their memory once no session holds them); returns their keys."""
        with self._lock:
            idle = [k for k in self._models if not self._busy.get(k)]
            for k in idle:
                del self._models[k]
            return idle

    def busy(self, key) -> bool:
        with self._lock:
            return bool(self._busy.get(key))
