"""Unpack worker processes: layers are unpacked outside the pulling process.

Parsing tar headers and creating files is Python work under the GIL; in the pulling process
it would compete with the downloads' event loop, and two overlay layers could not be unpacked
at once.  A worker only decodes, writes and verifies one layer blob into the directory it is
given (:func:`guestpull.image.unpack.unpack_file`); locks, metadata and renames stay in the
parent.

Workers are plain ``python -m guestpull.image.worker`` children speaking length-prefixed
pickles over their stdin/stdout (both ends are this program).  Not ``multiprocessing``: its
"spawn" start method re-runs the caller's ``__main__``, which a library must not require to
be guarded, and forking a process that has threads is unsafe.  Each worker dies with the
pull (PR_SET_PDEATHSIG) and costs ~25 MiB while it lives.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from guestpull.errors import UnpackError

_HEADER = struct.Struct("!I")
_PR_SET_PDEATHSIG = 1


# pickle is imported where it is used: a pull whose layers unpack in-process never needs it
# (~2 ms of every CLI pull's start-up, issue 15).


def _send(stream: IO[bytes], obj: Any) -> None:
    import pickle

    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next message; EOFError if the stream ends or breaks off inside one."""
    import pickle

    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("worker stream closed")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("worker stream closed mid-message")
    try:
        return pickle.loads(data)
    except pickle.UnpicklingError as err:
        raise EOFError(f"worker stream garbled: {err}") from None


class UnpackWorkers:
    """A few worker processes; ``workers(unpack_file, *args, **kwargs)`` runs one job.

    Callable from several threads at once: each call takes an idle worker (waiting if none),
    runs the job there and gives the worker back.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._procs: list[subprocess.Popen[bytes]] = []
        self._idle: queue.Queue[subprocess.Popen[bytes]] = queue.Queue()
        for _ in range(workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", "guestpull.image.worker"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
            )
            self._procs.append(proc)
            self._idle.put(proc)

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from guestpull.image.unpack import unpack_file

        if fn is not unpack_file:
            raise ValueError("unpack workers run guestpull.image.unpack.unpack_file only")
        proc = self._idle.get()
        try:
            assert proc.stdin is not None and proc.stdout is not None
            _send(proc.stdin, (args, kwargs))
            ok, value = _receive(proc.stdout)
        except (OSError, ValueError, EOFError) as exc:
            # ValueError: the pipe was closed because the workers were stopped.
            raise UnpackError(f"an unpack worker process died ({exc})") from None
        finally:
            self._idle.put(proc)
        if not ok:
            raise value
        return value

    def close(self) -> None:
        for proc in self._procs:
            with contextlib.suppress(OSError):
                if proc.stdin:
                    proc.stdin.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

    def kill(self) -> None:
        """Stop the workers at once, mid-layer if need be (the pull has failed)."""
        for proc in self._procs:
            with contextlib.suppress(OSError):
                proc.kill()
        self.close()


class OnDemandWorkers:
    """An unpack runner that decides per layer where it unpacks (issue 15).

    A layer smaller than ``min_layer_bytes`` uncompressed unpacks in the calling thread (never
    one whose blob is still ``arriving``):
    starting a worker (a Python process and its imports) would cost more than it saves.
    The first bigger layer starts the workers (``start``); from then on every layer goes to
    them.  ``start_now`` starts them at once, while the downloads begin.
    """

    def __init__(self, start: Callable[[], UnpackWorkers], *, min_layer_bytes: int,
                 start_now: bool = False) -> None:
        self.min_layer_bytes = min_layer_bytes
        self._start = start
        self._lock = threading.Lock()
        self._stopped = False
        self._pool: UnpackWorkers | None = start() if start_now else None

    @property
    def started(self) -> bool:
        return self._pool is not None

    def __call__(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from guestpull.image.decode import uncompressed_size_hint

        blob, media_type = args[0], args[1]
        # A blob still arriving has no trailer to read yet; it only ever streams into a worker.
        if (self._pool is None and kwargs.get("arriving") is None
                and uncompressed_size_hint(blob, media_type) < self.min_layer_bytes):
            return fn(*args, **kwargs)
        return self._workers()(fn, *args, **kwargs)

    def _workers(self) -> UnpackWorkers:
        with self._lock:
            if self._stopped:
                raise UnpackError("the unpack workers were stopped (the pull is ending)")
            if self._pool is None:
                self._pool = self._start()
            return self._pool

    def close(self) -> None:
        self._stop(kill=False)

    def kill(self) -> None:
        """Stop the workers at once; a layer unpacking in this process finishes on its own."""
        self._stop(kill=True)

    def _stop(self, *, kill: bool) -> None:
        with self._lock:
            self._stopped = True
            pool = self._pool
        if pool is not None and kill:
            pool.kill()
        elif pool is not None:
            pool.close()


def serve(stdin: IO[bytes], stdout: IO[bytes]) -> None:
    """The worker's loop: one job per message until the parent closes the pipe."""
    from guestpull.image.fsops import raise_open_file_limit
    from guestpull.image.unpack import unpack_file

    raise_open_file_limit()
    while True:
        try:
            args, kwargs = _receive(stdin)
        except EOFError:
            return
        try:
            result: tuple[bool, Any] = (True, unpack_file(*args, **kwargs))
        except Exception as exc:  # sent back and raised in the parent
            result = (False, exc)
        _send(stdout, result)


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


if __name__ == "__main__":
    _die_with_parent()
    serve(sys.stdin.buffer, sys.stdout.buffer)
