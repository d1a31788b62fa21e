"""A program served to the trusted grader: it runs in the sandbox behind ``wire.serve`` and
answers the grader's calls with plain data (see ``grader``)."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import time
from collections.abc import Iterator

from wmtp_jax.eval import wire
from wmtp_jax.eval.execution import sandbox
from wmtp_jax.eval.isolation import Limits, Run, Sandbox, exited, failure_reason, launch


class SessionEnded(BaseException):
    """A served program is gone, timed out or broke the protocol; ``reason`` is the verdict.
    A BaseException, so that benchmark test code's ``except Exception`` cannot swallow it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Session:
    """A program behind ``wire.serve`` in the sandbox: ``exchange(msg)`` sends a message and
    returns the next reply (a JSON value). Everything shares one deadline; a dead, slow or
    garbling program raises ``SessionEnded`` (and ``ended`` keeps the reason)."""

    def __init__(self, run: Run, deadline: float, limits: Limits):
        self.run, self.proc, self.deadline, self.limits = run, run.proc, deadline, limits
        self.ended: str | None = None
        self._buf, self.stderr, self._printed = bytearray(), bytearray(), 0
        os.set_blocking(self.proc.stdin.fileno(), False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.proc.stdout, selectors.EVENT_READ)
        self._sel.register(self.proc.stderr, selectors.EVENT_READ)

    def end(self, reason: str, error: type[SessionEnded] | None = None):
        """Record ``reason`` as the verdict (the first one stays) and raise ``error``."""
        self.ended = self.ended or reason
        raise (error or SessionEnded)(self.ended)

    def exchange(self, msg=None):
        if self.ended:
            raise SessionEnded(self.ended)
        line = self._pump(wire.dumps(msg) if msg is not None else b"")
        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            self.end("failed: malformed reply from the program")

    def _pump(self, out: bytes) -> bytes:
        """Write ``out`` (non-blocking), return the next stdout line; drains stderr."""
        pending = memoryview(out)
        writing = False
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0 and not pending:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > self.limits.max_output:
                self.end("failed: output limit exceeded")
            if bool(pending) != writing:
                writing = bool(pending)
                if writing:
                    self._sel.register(self.proc.stdin, selectors.EVENT_WRITE)
                else:
                    self._sel.unregister(self.proc.stdin)
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.end("timed out")
            for key, _ in self._sel.select(left):
                if key.fileobj is self.proc.stdin:
                    try:
                        pending = pending[os.write(key.fd, pending[:65536]) :]
                    except BlockingIOError:
                        pass
                    except BrokenPipeError:
                        pending = pending[:0]  # it stopped reading: its stdout says the rest
                    continue
                if key.fileobj is self.proc.stderr:
                    self._read_stderr()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self.end(self._exit_reason(writing))
                self._buf += chunk

    def _exit_reason(self, writing: bool) -> str:
        """stdout closed: wait (to the deadline) for the exit, reading stderr for the reason."""
        self._sel.unregister(self.proc.stdout)
        if writing:
            self._sel.unregister(self.proc.stdin)
        while (rc := exited(self.proc)) is None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return "timed out"
            if self._sel.select(min(left, 0.05)):
                self._read_stderr()
        return failure_reason(rc, bytes(self.stderr), rc != 0 and self.run.memory_exceeded())

    def _read_stderr(self) -> None:
        """The program's prints and tracebacks: the last 4 KiB kept, max_output bytes in all."""
        chunk = os.read(self.proc.stderr.fileno(), 65536)
        if not chunk:
            self._sel.unregister(self.proc.stderr)
        self._printed += len(chunk)
        self.stderr += chunk
        del self.stderr[:-4096]
        if self._printed > self.limits.max_output:
            self.end("failed: output limit exceeded")


@contextlib.contextmanager
def serve(
    program: str, timeout: float = 5.0, limits: Limits = Limits(), sb: Sandbox | None = None
) -> Iterator[Session]:
    """``program`` running in the sandbox behind ``wire.serve`` for ``timeout`` seconds in all;
    killed (with everything it started) on leaving the block."""
    sb = sb or sandbox()
    with launch(sb, program, "serve", limits, timeout, None) as run:
        session = Session(run, time.monotonic() + timeout, limits)
        try:
            yield session
        finally:
            session._sel.close()
