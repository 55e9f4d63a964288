"""Ending one question's run early: its caller left, or its deadline passed.

A server batches many requests into one run, so a run cannot simply be killed: the executor checks each question's
:class:`RunStop` between turns and drops a stopped question from the turns that follow, and the backbones check it
between decode steps (through the :class:`~recursivemas.runtime.calls.RowStop` each generate call carries, and
:meth:`~recursivemas.runtime.backend.Backend.cancel`), ending only that row while the others decode on.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from recursivemas.runtime.calls import RowStop

Stopped = Literal["cancelled", "deadline"]


@dataclass
class RunStop:
    """One question's stop signal: ``cancel()`` (its caller is gone) or a wall-clock ``deadline``
    (``time.time()`` seconds)."""

    deadline: float | None = None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def after(cls, seconds: float | None) -> RunStop:
        return cls(None if seconds is None else time.time() + seconds)

    def cancel(self) -> None:
        self._cancelled.set()

    def reason(self) -> Stopped | None:
        if self._cancelled.is_set():
            return "cancelled"
        if self.deadline is not None and time.time() >= self.deadline:
            return "deadline"
        return None

    def row(self) -> RowStop:
        return RowStop(self.tag, self.deadline)
