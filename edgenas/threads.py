"""How many intra-op threads a CPU run uses: a fixed count, or ``auto``, matched to the cores free.

With a fixed count, every OpenMP region of a step is split into that many equal parts, and the
region ends when its slowest part does. When another process holds one of the cores, the thread
sharing that core runs only in its scheduler slices, so every region waits for it: a search step
slows far more than a fair share of the machine would explain (``benchmarks/search_step.py
--busy``). ``auto`` measures, between batches, how many cores other processes keep busy (the
machine's busy time from ``/proc/stat`` less this process's own CPU time) and uses the cores left
over, so no thread has to share a core.

The price: PyTorch's CPU kernels split reductions by thread, so a run whose thread count changes
is not bitwise reproducible (a resumed run neither). A fixed count (the default) keeps that.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from edgenas.errors import EdgenasError

AUTO = "auto"

#: Where Linux keeps each CPU's time since boot.
PROC_STAT = "/proc/stat"

#: Seconds of CPU accounting a decision is based on: long enough to average a scheduler's slices,
#: short enough to follow a job that starts or stops within an epoch.
WINDOW_S = 0.5


def parse_threads(value: int | str | None) -> int | str:
    """``0`` (torch's default), a positive count, or ``"auto"``; anything else is refused."""
    if value is None:
        return 0
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if not text.isdigit():
            raise EdgenasError(f"threads {value!r} is neither a count nor 'auto'",
                               "pass a whole number >= 0 (0: one per physical core) or 'auto'")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise EdgenasError(f"threads {value!r} is not a whole number >= 0",
                           "pass a whole number >= 0 (0: one per physical core) or 'auto'")
    return value


def machine_busy_seconds() -> float | None:
    """CPU-seconds all processes have run since boot on the CPUs this process may use (the
    per-CPU lines of ``/proc/stat``), or None where unreadable.

    Only this process's CPUs count: under ``taskset`` or a cgroup cpuset, load elsewhere leaves
    them free. Steal time counts as busy: a hypervisor that takes a core away leaves it as
    unavailable as a neighbour process does.
    """
    mine = usable_cpu_ids()
    total, seen = 0, 0
    try:
        with open(PROC_STAT, encoding="ascii") as f:
            for line in f:
                fields = line.split()
                name = fields[0] if fields else ""
                if not name.startswith("cpu") or not name[3:].isdigit() or len(fields) < 9:
                    continue
                if mine is not None and int(name[3:]) not in mine:
                    continue
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
                total += user + nice + system + irq + softirq + steal
                seen += 1
    except (OSError, ValueError):
        return None
    return total / os.sysconf("SC_CLK_TCK") if seen else None


def own_cpu_seconds() -> float:
    """CPU-seconds this process (all its threads) has run."""
    t = os.times()
    return t.user + t.system


#: One reading of the CPU accounting: (wall seconds, the machine's busy CPU-seconds, this process's).
CpuReading = tuple[float, float, float]


def cpu_reading() -> CpuReading | None:
    """The CPU accounting now, or None where the machine's is unreadable."""
    busy = machine_busy_seconds()
    return None if busy is None else (time.monotonic(), busy, own_cpu_seconds())


def others_busy(mark: CpuReading, now: CpuReading) -> float:
    """Cores other processes kept busy between two readings (on this process's CPUs)."""
    wall = now[0] - mark[0]
    return max(0.0, ((now[1] - mark[1]) - (now[2] - mark[2])) / wall) if wall > 0 else 0.0


def free_cores(others: float, cpus: int) -> int:
    """Cores left when other processes keep ``others`` of ``cpus`` busy: rounded, at least 1."""
    return max(1, math.floor(cpus - others + 0.5))


def usable_cpu_ids() -> set[int] | None:
    """The ids of the CPUs this process may run on, or None where the OS has no affinity mask."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return None


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one)."""
    ids = usable_cpu_ids()
    return len(ids) if ids is not None else (os.cpu_count() or 1)


@dataclass
class ThreadGovernor:
    """Sets torch's intra-op threads, between batches, to the cores other processes leave free.

    ``tick()`` is called after every batch; at most every ``window`` seconds it works out how many
    cores other processes used since the last decision and, when the same new count comes out of
    two decisions in a row (one noisy window does not flap the pool), switches to it.

    CPUs are counted as the OS lists them: on a machine with SMT a neighbour on one hardware
    thread leaves its sibling listed free, so the pool (at most one thread per physical core) only
    shrinks once the neighbours hold more CPUs than the physical cores' worth left over.
    """

    max_threads: int
    cpus: int = field(default_factory=usable_cpus)
    window: float = WINDOW_S
    clock: Callable[[], float] = time.monotonic
    busy: Callable[[], float | None] = machine_busy_seconds
    own: Callable[[], float] = own_cpu_seconds
    set_threads: Callable[[int], None] = torch.set_num_threads
    threads: int = 0
    _pending: int = 0
    _mark: CpuReading | None = None
    _thread_seconds: float = 0.0
    _seconds: float = 0.0

    def __post_init__(self) -> None:
        self.threads = self.max_threads
        self.set_threads(self.threads)
        self._mark = self._read()

    @property
    def available(self) -> bool:
        """False where the machine's CPU accounting cannot be read (then the count stays fixed)."""
        return self._mark is not None

    def _read(self) -> CpuReading | None:
        busy = self.busy()
        return None if busy is None else (self.clock(), busy, self.own())

    def others(self, now: CpuReading) -> float:
        """Cores other processes kept busy since the last mark."""
        assert self._mark is not None
        return others_busy(self._mark, now)

    def decide(self, others: float) -> int:
        """The thread count for ``others`` busy cores: the free cores, rounded, within 1..max."""
        return min(self.max_threads, free_cores(others, self.cpus))

    def tick(self) -> None:
        if self._mark is None or self.clock() - self._mark[0] < self.window:
            return
        now = self._read()
        if now is None:
            return
        wall = now[0] - self._mark[0]
        self._thread_seconds += self.threads * wall
        self._seconds += wall
        want = self.decide(self.others(now))
        self._mark = now
        if want == self.threads:
            self._pending = 0
        elif want == self._pending:
            self.threads, self._pending = want, 0
            self.set_threads(want)
        else:
            self._pending = want

    def mean_threads(self) -> float:
        """The time-weighted mean thread count since the last call (for an epoch's record)."""
        mean = self._thread_seconds / self._seconds if self._seconds else float(self.threads)
        self._thread_seconds = self._seconds = 0.0
        return round(mean, 2)


@contextlib.contextmanager
def thread_policy(policy: int | str) -> Iterator[ThreadGovernor | None]:
    """Run a block under a CPU thread policy; yields the governor under ``auto``, else None.

    ``0`` keeps torch's default (one thread per physical core). On an accelerator the policy
    still sets the CPU's threads (data preparation, the host side of each step). The count in
    force before is restored afterwards, so a run does not change the threads of what follows it
    in the same process.
    """
    before = torch.get_num_threads()
    try:
        if policy == AUTO:
            yield ThreadGovernor(max_threads=before)
        else:
            if policy:
                torch.set_num_threads(int(policy))
            yield None
    finally:
        torch.set_num_threads(before)
