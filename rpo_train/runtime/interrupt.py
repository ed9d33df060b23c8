"""Stopping a run cleanly on Ctrl-C (SIGINT) or SIGTERM: at the next step boundary, with a checkpoint there.

``StopSignals.handling()`` installs the handlers for a block (``rpo-train``'s run only, and only in the main thread)
and restores the previous ones after it. The first signal only records itself and says so on stderr; the trainer asks
``requested()`` between steps (``Trainer(stop=...)``). A second signal raises ``KeyboardInterrupt`` at once: what was
checkpointed stays intact, since every checkpoint write is atomic.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class StopSignals:
    """The stop signal a run received last (``received``, None while none came); ``announce``: say on stderr that
    the first one came (one rank of a job does)."""

    announce: bool = True
    received: int | None = None

    def requested(self) -> bool:
        return self.received is not None

    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM``."""
        return signal.Signals(self.received or signal.SIGINT).name

    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process the signal ended: 130 for SIGINT, 143 for
        SIGTERM."""
        return 128 + (self.received or signal.SIGINT)

    def _handle(self, signum: int, frame) -> None:
        stopping, self.received = self.received is not None, signum
        if stopping:
            raise KeyboardInterrupt
        if not self.announce:
            return
        again = "Ctrl-C" if signum == signal.SIGINT else "a second signal"
        message = (f"\nrpo-train: {self.name()} received: stopping after this step with a checkpoint ({again} stops "
                   "at once)\n")
        with contextlib.suppress(OSError):  # a raw write: safe even while the interrupted code was printing
            os.write(2, message.encode())

    @contextlib.contextmanager
    def handling(self) -> Iterator[StopSignals]:
        """Handle SIGINT and SIGTERM in the block when called from the main thread (elsewhere the handlers cannot be
        installed, and the block runs without them); the previous handlers are back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
