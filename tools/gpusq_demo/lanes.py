"""Run the demo's training subprocesses side by side on the CPU cores.

A small CPU model trains faster as two single-thread processes than as one
two-thread process (PyTorch's intra-op threads scale poorly on tiny
tensors, and each run's start-up is single-threaded), so ``tools/demo.py
--jobs N`` runs up to ``N`` subprocesses at once. :class:`Lanes` hands out
the ``N`` slots:

- by priority (a lower number first, then first come first served): the
  dense teachers gate everything after them;
- a run may ask for several slots, and its subprocess gets that many
  threads: the seg teacher, which the other tasks wait for, trains alone
  with all cores;
- :meth:`Lanes.exclusive` takes every slot: the in-process work (ONNX
  export and latency timing, per-image scoring) runs with nothing else on
  the machine, so its latencies are not measured under load.
"""

import contextlib
import heapq
import itertools
import os
import threading
from typing import Iterator


class Lanes:
    """``jobs`` slots for subprocesses on a machine with ``cpus`` cores.

    Args:
        jobs (int): Subprocesses at most at once (>= 1).
        cpus (int, optional): Cores to share among them. Defaults to
            ``os.cpu_count()``.
    """

    def __init__(self, jobs: int, cpus: int = None):
        if jobs < 1:
            raise ValueError(f'--jobs must be >= 1, got {jobs}')
        self.jobs = jobs
        self.cpus = max(cpus or os.cpu_count() or 1, 1)
        self._free = jobs
        self._cv = threading.Condition()
        self._waiting: list = []
        self._seq = itertools.count()

    def _acquire(self, need: int, priority: int) -> None:
        with self._cv:
            entry = (priority, next(self._seq), need)
            heapq.heappush(self._waiting, entry)
            while not (self._waiting[0] is entry and self._free >= need):
                self._cv.wait()
            heapq.heappop(self._waiting)
            self._free -= need
            self._cv.notify_all()

    def _release(self, n: int) -> None:
        with self._cv:
            self._free += n
            self._cv.notify_all()

    def threads(self, slots: int) -> int:
        """Threads for a subprocess holding ``slots`` of the slots."""
        return max(self.cpus * slots // self.jobs, 1)

    @contextlib.contextmanager
    def slot(self, priority: int = 1, width: int = 1) -> Iterator[int]:
        """Hold ``width`` slots (at most all); yields the threads the
        subprocess may use."""
        width = min(max(width, 1), self.jobs)
        self._acquire(width, priority)
        try:
            yield self.threads(width)
        finally:
            self._release(width)

    @contextlib.contextmanager
    def exclusive(self, priority: int = 9) -> Iterator[int]:
        """Hold every slot: nothing else runs meanwhile."""
        self._acquire(self.jobs, priority)
        try:
            yield self.cpus
        finally:
            self._release(self.jobs)
