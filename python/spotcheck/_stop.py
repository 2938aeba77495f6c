"""Reasons to stop or to checkpoint early: SIGTERM/SIGINT, spot notices, rebalance notices.

The rules are the Rust trainer's: SIGTERM or SIGINT, or a spot interruption notice from IMDS,
means "save and stop"; a rebalance recommendation asks for one extra save. Notices arrive one
of two ways:

- under ``spotcheck run`` (``SPOTCHECK_NOTICE_FILE`` is set): the launcher polls IMDS, writes
  the notice file and signals this process (SIGTERM for a spot notice, SIGUSR1 for a
  rebalance); the file is read whenever it changes, so it works even where signal handlers
  cannot be installed;
- on its own: a native thread polls IMDS (where IMDS can exist; the shared rules of the
  `spotcheck-notices` crate, as the trainer: backing off, never giving up, while IMDS does not
  answer).

Handlers only set flags; the training loop asks at step boundaries, so a step is never torn.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from typing import Any, Callable, Dict, Mapping, Optional

from . import _native

log = logging.getLogger("spotcheck")

NOTICE_FILE_ENV = _native.NOTICE_FILE_ENV
DMI_VENDOR = "/sys/devices/virtual/dmi/id/sys_vendor"


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


class StopWatch:
    """Collects stop requests and rebalance recommendations for one training process."""

    def __init__(
        self,
        handle_signals: bool = True,
        env: Mapping[str, str] = os.environ,
        read_text: Callable[[str], Optional[str]] = _read_text,
    ) -> None:
        self.reason: Optional[str] = None
        self._signalled = False
        self._rebalance_pending = 0
        self._rebalance_seen = 0
        self._previous: Dict[int, Any] = {}
        self._notice_file = env.get(NOTICE_FILE_ENV) or None
        self._notice_stamp: Optional[tuple] = None
        self._watcher: Optional[Any] = None
        if handle_signals:
            self._install(signal.SIGTERM, stop=True)
            self._install(signal.SIGINT, stop=True)
            if self._notice_file:
                self._install(signal.SIGUSR1, stop=False)
        if self._notice_file is not None:
            log.info("spot notices come from spotcheck run (%s)", self._notice_file)
        else:
            endpoint = _native.imds_endpoint(
                env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"),
                read_text(DMI_VENDOR),
                env.get("SPOTCHECK_IMDS"),
            )
            if endpoint:
                try:
                    every = float(env.get("SPOTCHECK_IMDS_POLL_SECONDS") or 5.0)
                except ValueError:
                    every = 5.0
                log.info("polling %s for spot notices every %.1f s", endpoint, every)
                self._watcher = _native.NoticeWatcher(endpoint, every)

    def _install(self, signum: int, stop: bool) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "not in the main thread: %s is not handled here (spot notices still are)",
                signal.Signals(signum).name,
            )
            return
        self._previous[signum] = signal.signal(signum, self._handler(stop))

    def _handler(self, stop: bool) -> Callable[[int, Any], None]:
        def handle(signum: int, frame: Any) -> None:
            if stop:
                self._signalled = True
            # Read the notice file again on the next check: under the launcher it says why
            # (a spot notice arrives as SIGTERM too; SIGUSR1 means a rebalance).
            self._notice_stamp = None
            previous = self._previous.get(signum)
            if callable(previous) and previous is not signal.default_int_handler:
                previous(signum, frame)

        return handle

    def refresh(self) -> None:
        """Takes in notices from the IMDS thread and the notice file."""
        if self._watcher is not None:
            spot, rebalance = self._watcher.take()
            if spot and self.reason is None:
                log.warning("spot interruption notice: saving and stopping")
                self.reason = "spot-notice"
            if rebalance:
                log.info("rebalance recommendation: one extra checkpoint")
                self._rebalance_pending += 1
        if self._notice_file is not None:
            self._read_notice_file()
        if self._signalled and self.reason is None:
            self.reason = "signal"

    def _read_notice_file(self) -> None:
        path = self._notice_file
        assert path is not None
        try:
            st = os.stat(path)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._notice_stamp:
            return
        self._notice_stamp = stamp
        try:
            with open(path, encoding="utf-8") as f:
                notices = json.load(f)
        except (OSError, ValueError):
            self._notice_stamp = None
            return
        if not isinstance(notices, dict):
            return
        stop = notices.get("stop")
        if isinstance(stop, str) and self.reason is None:
            self.reason = stop
        count = notices.get("rebalance")
        if isinstance(count, int) and count > self._rebalance_seen:
            self._rebalance_pending += count - self._rebalance_seen
            self._rebalance_seen = count

    def should_stop(self) -> bool:
        """True once a stop was requested."""
        self.refresh()
        return self.reason is not None

    def rebalance_pending(self) -> bool:
        """Whether a rebalance recommendation still wants its extra save."""
        self.refresh()
        return self._rebalance_pending > 0

    def rebalance_done(self) -> None:
        """The extra save for pending recommendations was taken."""
        self._rebalance_pending = 0

    def close(self) -> None:
        """Stops polling and puts the previous signal handlers back."""
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                if previous is not None:
                    signal.signal(signum, previous)
        self._previous.clear()
