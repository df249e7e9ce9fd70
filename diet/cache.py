"""On-disk artifact store: tensors (safetensors) + a JSON sidecar that commits them.

Why two files and this order: the safetensors file is written to a temporary name and renamed into place, then the
JSON (holding the settings, the key and the sha256 of the safetensors bytes) is written the same way. A reader needs
the JSON first, so an interrupted write leaves nothing that would be read; a truncated, corrupted or mismatched file
fails the checksum and is deleted and recomputed — never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from diet.errors import Cancelled
from diet.settings import cache_root


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


COUNT_ENV = "DIET_COUNT_COMPUTED"  # a file path: every entry written (= computed, not read) appends "<kind> <key>"


class ArtifactCache:
    """A folder of `<kind>/<key>.safetensors` + `<kind>/<key>.json` pairs (or JSON alone for small results).

    With DIET_COUNT_COMPUTED set, each entry written also appends one line to that file. Why: a test with several
    app sessions counts computations from outside the server process, at the one place every computed result
    passes through."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else cache_root() / "artifacts"

    def _paths(self, kind: str, key: str) -> tuple[Path, Path]:
        d = self.root / kind
        return d / f"{key}.safetensors", d / f"{key}.json"

    def has(self, kind: str, key: str) -> bool:
        return self._paths(kind, key)[1].is_file()

    def save_tensors(self, kind: str, key: str, tensors: dict[str, np.ndarray], meta: dict) -> None:
        from safetensors.numpy import save

        st_path, js_path = self._paths(kind, key)
        data = save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
        atomic_write_bytes(st_path, data)
        atomic_write_json(js_path, {"key": key, "sha256": hashlib.sha256(data).hexdigest(), "meta": meta})
        self._count(kind, key)

    def load_tensors(self, kind: str, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """The cached tensors and meta, or None when missing or unusable (which is then removed)."""
        from safetensors.numpy import load

        st_path, js_path = self._paths(kind, key)
        if not js_path.is_file():
            return None
        try:
            head = json.loads(js_path.read_text())
            data = st_path.read_bytes()
            if head.get("key") != key or hashlib.sha256(data).hexdigest() != head.get("sha256"):
                raise ValueError("checksum or key mismatch")
            return load(data), head["meta"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"cache entry {kind}/{key} is corrupt ({e}); it will be recomputed", stacklevel=2)
            self.remove(kind, key)
            return None

    def save_json(self, kind: str, key: str, obj: dict) -> None:
        atomic_write_json(self._paths(kind, key)[1], {"key": key, "meta": obj})
        self._count(kind, key)

    @staticmethod
    def _count(kind: str, key: str) -> None:
        path = os.environ.get(COUNT_ENV)
        if path:
            with open(path, "a") as f:  # one short append per entry: atomic on a local file system
                f.write(f"{kind} {key}\n")

    def load_json(self, kind: str, key: str) -> dict | None:
        js_path = self._paths(kind, key)[1]
        if not js_path.is_file():
            return None
        try:
            head = json.loads(js_path.read_text())
            if head.get("key") != key:
                raise ValueError("key mismatch")
            return head["meta"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(f"cache entry {kind}/{key} is corrupt ({e}); it will be recomputed", stacklevel=2)
            self.remove(kind, key)
            return None

    def remove(self, kind: str, key: str) -> None:
        for p in self._paths(kind, key):
            p.unlink(missing_ok=True)

    @contextmanager
    def computing(self, kind: str, key: str, what: str = "this result", on_wait: Callable[[str], None] | None = None,
                  should_stop: Callable[[], bool] | None = None) -> Iterator[None]:
        """Hold the lock file next to one entry while it is computed: another job about to compute the same entry
        (another session, another server, the CLI) waits, says so through `on_wait`, then finds it cached.

        fcntl.flock locks belong to the open file, so two threads of one process exclude each other too. The lock
        file stays (empty, harmless); the entry itself is still written atomically. `should_stop` ends a wait with
        `Cancelled`; `on_wait("")` says the wait is over."""
        path = self.root / ".locks" / kind / f"{key}.lock"  # beside, not among, the entries
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if should_stop is not None and should_stop():
                        raise Cancelled("cancelled while waiting; nothing was written") from None
                    if on_wait is not None:
                        on_wait(f"another job is computing {what}; its result will be used here")
                    time.sleep(0.25)
            if on_wait is not None:
                on_wait("")
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
