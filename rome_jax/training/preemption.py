"""Stopping on SIGTERM/SIGINT without losing work: `StopSignals` and `PREEMPTED_EXIT_CODE`.

with StopSignals() as signals:
    ...  # after each step:
    if signals.should_stop(step): save a checkpoint, return (train.py exits with 75)
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import jax
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75
"""train.py's exit status after SIGTERM/SIGINT: a checkpoint was saved, re-run to resume
(EX_TEMPFAIL: "try again")."""


class StopSignals:
    """SIGTERM / SIGINT set a flag; the loop saves and stops at the next step boundary.

    A second SIGINT interrupts at once (KeyboardInterrupt). With several processes
    the handlers are left to JAX's preemption service (on by default with
    `jax.distributed.initialize()`), and every host asks it each step whether all
    hosts reached the step at which to save (`reached_preemption_sync_point`).
    """

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        logger.warning("received %s: saving a checkpoint at the next step", signal.Signals(signum).name)

    def __enter__(self) -> StopSignals:
        if jax.process_count() == 1:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                for signum in (signal.SIGTERM, signal.SIGINT):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after global step `step` (in every process alike)."""
        if jax.process_count() > 1:
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # the preemption service is off: no coordinated stop
                return False
        return self.received is not None
