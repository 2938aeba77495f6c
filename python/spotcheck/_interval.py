"""When to checkpoint: fixed triggers and the Young/Daly optimum, as the Rust trainer does.

With checkpoint cost C (seconds the training loop is blocked per save, plus how much slower
the steps ran while the save was written) and mean time between interruptions M, Young's
interval sqrt(2CM) minimises expected lost plus spent time; Daly's
correction is ``sqrt(2CM)·(1 + sqrt(C/2M)/3 + C/18M) − C`` for C < 2M, and M otherwise. The
interval is never shorter than the last save took to become durable (one save in flight), nor
than the uploader takes to ship one to S3 (checkpointing faster only grows its backlog, so the
newest checkpoint in S3 falls ever further behind). Observed restarts only ever shorten M.
C is measured once per save and one measurement is noisy (a step descheduled on a busy host
can multiply it), so the interval uses the median of the last few saves' costs.
Pure: times and the filesystem's answers are passed in.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple


def daly_interval(cost: float, mtbf: float) -> float:
    """Daly's optimum interval in seconds for checkpoint cost ``cost`` and MTBF ``mtbf``."""
    c = max(cost, 1e-6)
    m = max(mtbf, 1e-6)
    if c >= 2.0 * m:
        return mtbf
    young = math.sqrt(2.0 * c * m)
    return max(young * (1.0 + math.sqrt(c / (2.0 * m)) / 3.0 + c / (18.0 * m)) - c, c)


def mtbf(expected_per_hour: float, restarts: int, run_seconds: float) -> Optional[float]:
    """Mean time between interruptions (s) from the expected rate and this run's restarts."""
    observed = restarts / (run_seconds / 3600.0) if run_seconds > 60.0 and restarts > 0 else 0.0
    rate = max(expected_per_hour, observed)
    return 3600.0 / rate if rate > 0 else None


#: The share of training time the ranks' agreement (multi-process jobs) may take.
AGREEMENT_SHARE = 0.01
#: The longest the ranks go between agreements: a stop request reaches every rank within it.
AGREEMENT_MAX_SECONDS = 1.0


def agreement_gap(cost: float, step_seconds: float) -> int:
    """How many step boundaries a multi-process job's ranks let pass between two agreements
    (each ``cost`` seconds, a step every ``step_seconds``): enough that agreeing takes at most
    :data:`AGREEMENT_SHARE` of training time, few enough that the ranks agree at least every
    :data:`AGREEMENT_MAX_SECONDS`. 0: agree at every boundary."""
    if not (cost > 0.0 and step_seconds > 0.0):
        return 0
    eps = 1e-9  # ratios that are whole numbers must not round up or down by a float's error
    by_share = math.ceil(cost / (AGREEMENT_SHARE * step_seconds) - eps) - 1
    by_latency = math.floor(AGREEMENT_MAX_SECONDS / step_seconds + eps) - 1
    return max(0, min(by_share, by_latency))


#: How many recent saves' costs the adaptive interval's median is taken over: an odd number, so
#: one outlier in the window never becomes the median.
RECENT_COSTS = 5


def lower_median(values) -> float:
    """The lower median (of two, the smaller: a shorter interval loses less work)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


class Schedule:
    """Decides, at step boundaries, whether a periodic checkpoint is due.

    The first call is always due (it measures the cost). After that: every ``every_steps``
    steps, every ``every_seconds`` seconds, or at the adaptive interval, whichever comes first.
    Never while a save is in flight: a periodic checkpoint that comes due then is skipped.
    """

    def __init__(
        self,
        interruptions_per_hour: float = 0.5,
        every_steps: Optional[int] = None,
        every_seconds: Optional[float] = None,
        adaptive: bool = True,
    ) -> None:
        self.interruptions_per_hour = interruptions_per_hour
        self.every_steps = every_steps
        self.every_seconds = every_seconds
        self.adaptive = adaptive
        self.interval: Optional[float] = None
        self.upload_floor = 0.0
        self.last_save_at: Optional[float] = None
        self.last_stall = 0.0
        #: Recent saves' full costs, newest last: the loop's blocked time plus the slowdown of
        #: the steps that ran while each was written (see :meth:`tick`).
        self._costs: Deque[float] = deque(maxlen=RECENT_COSTS)
        #: Typical seconds per step with no save in flight (a moving average).
        self.idle_step: Optional[float] = None
        self._last_tick: Optional[float] = None
        self._slowdown = 0.0

    def tick(self, now: float, busy: bool) -> None:
        """One training step ended at ``now``; ``busy``: a save was in flight meanwhile.

        A save's cost is not only the time it blocks the loop: where training and the
        persister's hashing and writing share the CPUs, the steps during the save run slower.
        Steps with no save in flight set the typical step time; whatever steps in flight take
        beyond it adds to the save's cost.
        """
        if self._last_tick is not None:
            dt = now - self._last_tick
            if busy:
                if self.idle_step is not None:
                    self._slowdown += max(0.0, dt - self.idle_step)
            else:
                self.idle_step = dt if self.idle_step is None else 0.9 * self.idle_step + 0.1 * dt
        self._last_tick = now

    def due(self, now: float, step: Optional[int], busy: bool) -> bool:
        """Whether to save now (``now`` in seconds of any monotonic clock)."""
        if busy:
            return False
        if self.last_save_at is None:
            return True
        since = now - self.last_save_at
        if self.every_steps and step is not None and step % self.every_steps == 0:
            return True
        if self.every_seconds is not None and since >= self.every_seconds:
            return True
        return self.interval is not None and since >= max(self.interval, self.upload_floor)

    def saved(self, now: float, stall: float) -> None:
        """A save was handed over at ``now`` after blocking the loop for ``stall`` seconds."""
        self.last_save_at = now
        self.last_stall = stall
        # The blocked time is the stall, not a slow step.
        self._last_tick = now
        self._slowdown = 0.0

    def persisted(self, persist_seconds: float, restarts: int, run_seconds: float) -> None:
        """A save became durable after ``persist_seconds``: recompute the adaptive interval."""
        self._costs.append(self.last_stall + self._slowdown)
        self._slowdown = 0.0
        if not self.adaptive:
            return
        m = mtbf(self.interruptions_per_hour, restarts, run_seconds)
        if m is not None:
            self.interval = max(daly_interval(lower_median(self._costs), m), persist_seconds)

    @property
    def last_cost(self) -> float:
        """The last save's full cost (0 before any)."""
        return self._costs[-1] if self._costs else 0.0

    def upload_pace(self, seconds: float) -> None:
        """The uploader needs ``seconds`` per checkpoint: the adaptive interval's floor."""
        self.upload_floor = max(seconds, 0.0)


#: What :meth:`UploadWatch.check` learns of a checkpoint directory.
GONE, UPLOADED, UPLOADING, WAITING = "gone", "uploaded", "uploading", "waiting"


#: How long the oldest pending checkpoint's wait floors the pace before the uploader has shown
#: any marker: an uploader that writes none must not slow checkpointing down for ever.
NO_MARKERS_SECONDS = 600.0


class UploadWatch:
    """How fast the uploader ships checkpoints, from SageMaker's upload markers.

    The pace is how long the checkpoint just seen fully uploaded took since it became durable,
    or how long the oldest one still on its way has waited, whichever is longer: a backlog
    shipped in no particular order may take long to complete any single checkpoint. Before the
    uploader has shown it writes markers (a checkpoint fully uploaded, or any marker beside a
    pending one's files) that wait counts up to :data:`NO_MARKERS_SECONDS`, so that a cheap
    save does not queue dozens of checkpoints behind a slow uploader in a job's first seconds.
    The Rust trainer's persister applies the same rule.
    """

    def __init__(self) -> None:
        self.pending: List[Tuple[str, float]] = []
        self.seen_any = False

    def written(self, directory: str, now: float) -> None:
        """The checkpoint in ``directory`` became durable at ``now``."""
        self.pending.append((directory, now))

    def check(self, now: float, state: Callable[[str], str]) -> Optional[float]:
        """Drops the checkpoints now uploaded or gone (``state(dir)`` is one of :data:`GONE`,
        :data:`UPLOADED`, :data:`UPLOADING`, :data:`WAITING`); returns the pace in seconds, or
        None when there is nothing to say yet."""
        pace: Optional[float] = None
        still: List[Tuple[str, float]] = []
        for directory, written in self.pending:
            seen = state(directory)
            if seen == GONE:
                continue
            if seen == UPLOADED:
                pace = now - written
                self.seen_any = True
                continue
            if seen == UPLOADING:
                self.seen_any = True
            still.append((directory, written))
        self.pending = still
        if still:
            oldest_wait = max(now - written for _, written in still)
            counts = self.seen_any or oldest_wait <= NO_MARKERS_SECONDS
            if counts and (pace is None or oldest_wait > pace):
                pace = oldest_wait
        return pace

    def silent(self, now: float) -> bool:
        """Whether a checkpoint has waited past :data:`NO_MARKERS_SECONDS` and the uploader has
        shown no marker at all: its sync may not be running."""
        return not self.seen_any and any(now - w > NO_MARKERS_SECONDS for _, w in self.pending)
