"""Sharing one experiment directory among many workers: shards and run claims.

A heldout experiment is thousands of independent trainings writing into one directory,
often on preemptible machines. Two mechanisms keep that safe and cheap:

* **Shards**: `shard_run_ids` splits the wanted run ids among N workers by position
  (``ids[i::N]``), from flags or from the scheduler's environment (Slurm job arrays,
  Kubernetes Indexed Jobs), so a cluster job needs no coordinator.
* **Claims**: before training a run, a worker claims it with a small file
  ``<experiment_dir>/.claims/<subset>/<run_id>.json`` (host, pid, token, expiry). A live claim of
  another worker means "skip it, someone is on it"; a claim whose lease expired, or
  whose process is gone from this host, is stale and may be taken over. Claims are
  renewed by a background thread (`Claims.heartbeat`) for as long as the worker lives,
  also while it compiles and writes, and removed when the run is written.
* **Preemption**: a claim records the scheduler's task identity (`task_identity`: Slurm
  array task or job, with the job step and the rank in the step; or Kubernetes job and
  completion index). A scheduler runs one instance of a task at a time, so a requeued
  task that finds claims of its own task identity takes them over at once instead of
  waiting for the lease to expire; two tasks running at once (two steps of one job)
  never share an identity.
* **Exit status**: a worker that ends with runs of its shard missing because other
  workers claim them says so, and ``train.py`` exits with
  `EXIT_RUNS_CLAIMED_ELSEWHERE`, so a scheduler retries the task later.

Why this is safe, also on gs:// (which has no exclusive create through tf.io.gfile):
completeness never depends on claims. A run is complete exactly when its
``aux_arrays.npz`` exists, and that file appears by one atomic rename of a fully
written object, so no interleaving of workers can produce a corrupt or half-written
run; at worst two workers train the same run and the second rename replaces an
identical file. Claims only prevent that wasted work: a worker writes its claim, waits
`settle_seconds`, and reads it back; with GCS's strong read-after-write consistency,
of two workers racing for one run exactly one reads back its own token, unless their
writes are further apart than the settle delay (then the later one already saw the
earlier claim when it checked). On a local or network file system the same protocol
holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence

import tensorflow as tf

from heldout.errors import ParameterError
from heldout.runtime import process_alive
from heldout.store import files
from heldout.store import layout as layout_lib

# Exit status of a worker whose shard still has runs missing because other workers hold
# their claims (live or not yet expired): not done, not failed, retry later.
EXIT_RUNS_CLAIMED_ELSEWHERE = 3
MAX_LEASE_SECONDS = 7 * 24 * 3600  # a week: longer leases would outlive any preemption

# Seconds after which a claim not renewed is taken as abandoned (a killed worker's).
DEFAULT_LEASE_SECONDS = 600.0


def task_identity(environ: Mapping[str, str] | None = None) -> str | None:
    """The scheduler's identity of this task, the same after a requeue; None outside one.

    It names one *task*, never a whole job: two tasks running at once must never share
    it, or each would take the other's live claims for its own.

    Slurm: the array task (``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``) or else the
    job (``SLURM_JOB_ID``), then the job step (``SLURM_STEP_ID``; ``batch`` for the
    batch script) and the task of the step (``SLURM_PROCID``):
    ``slurm:<job>[_<array task>]:<step>:<procid>``. Two ``srun`` steps of one job, or two
    tasks of one step, differ; a requeued job keeps its id and numbers its steps from 0
    again, so its tasks find their predecessors' claims. Kubernetes Indexed Jobs:
    ``k8s:<JOB_NAME or the pod's host name prefix>:<JOB_COMPLETION_INDEX>`` (the pods of
    an Indexed Job are named ``<job name>-<index>-<suffix>``, one pod per index at a
    time; set ``JOB_NAME`` through the downward API to be exact).
    """
    environ = os.environ if environ is None else environ
    job = None
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    elif environ.get("SLURM_JOB_ID"):
        job = environ["SLURM_JOB_ID"]
    if job is not None:
        step = environ.get("SLURM_STEP_ID") or "batch"
        return f"slurm:{job}:{step}:{environ.get('SLURM_PROCID') or '0'}"
    index = environ.get("JOB_COMPLETION_INDEX")
    if index:
        name = environ.get("JOB_NAME") or socket.gethostname().rsplit(f"-{index}-", 1)[0]
        return f"k8s:{name}:{index}"
    return None


@dataclasses.dataclass(frozen=True)
class Shard:
    """This worker's part of a job: shard `index` of `count`."""

    index: int
    count: int
    source: str  # where it came from: "flags", "SLURM_ARRAY_TASK_ID", ...


def resolve_shard(num_shards: int | None, shard_index: int | None,
                  environ: Mapping[str, str] | None = None) -> Shard:
    """This worker's shard from flags, else from the scheduler's environment.

    Slurm job arrays set ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT`` (and
    ``SLURM_ARRAY_TASK_MIN`` when ids do not start at 0); Kubernetes Indexed Jobs set
    ``JOB_COMPLETION_INDEX``, with the count given by ``--num_shards``. No flags and
    no scheduler: one shard of one.

    Raises:
        ValueError: an index outside ``[0, count)`` or an index without a count.
    """
    environ = os.environ if environ is None else environ
    source = "flags"
    if shard_index is None:
        if "SLURM_ARRAY_TASK_ID" in environ:
            first = int(environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            shard_index = int(environ["SLURM_ARRAY_TASK_ID"]) - first
            if num_shards is None and "SLURM_ARRAY_TASK_COUNT" in environ:
                num_shards = int(environ["SLURM_ARRAY_TASK_COUNT"])
            source = "SLURM_ARRAY_TASK_ID"
        elif "JOB_COMPLETION_INDEX" in environ:
            shard_index = int(environ["JOB_COMPLETION_INDEX"])
            source = "JOB_COMPLETION_INDEX"
    if shard_index is None:
        if num_shards not in (None, 1):
            raise ParameterError("num_shards", "also give shard_index (or run under a "
                                 "Slurm array / Kubernetes Indexed Job)", num_shards)
        return Shard(0, 1, "single")
    if num_shards is None:
        raise ParameterError("num_shards", f"needed with shard index {shard_index} from "
                             f"{source}")
    if not 0 <= shard_index < num_shards:
        raise ParameterError("shard_index", f"(from {source}) expected 0 <= index < "
                             f"num_shards={num_shards}", shard_index)
    return Shard(shard_index, num_shards, source)


def shard_run_ids(run_ids: Sequence[int], shard: Shard) -> list[int]:
    """The run ids of one shard: every `count`-th id from position `index`.

    Interleaving (not contiguous blocks) spreads early and late ids evenly, so shards
    finish at about the same time and a partly done experiment is a uniform sample.
    """
    return list(run_ids)[shard.index::shard.count]


@dataclasses.dataclass
class Claims:
    """The claims this worker holds on runs of one subset folder.

    Use `for_subset` to place them; claim files live outside the subset folder, so
    listing a subset folder shows run folders only.
    """

    directory: str  # where the claim files go: <experiment_dir>/.claims/<subset>
    lease_seconds: float = DEFAULT_LEASE_SECONDS  # a claim not renewed for this long is stale
    settle_seconds: float = 1.0  # wait between writing a claim and reading it back
    token: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    held: set[int] = dataclasses.field(default_factory=set)
    task: str | None = dataclasses.field(default_factory=task_identity)
    _renewed: float = 0.0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        # NaN would write claims that never expire; inf (or a lease of centuries) stops
        # the heartbeat thread, whose wait cannot be that long.
        if not (isinstance(self.lease_seconds, int | float) and math.isfinite(
                self.lease_seconds) and 0 < self.lease_seconds <= MAX_LEASE_SECONDS):
            raise ParameterError("lease_seconds", "expected a number of seconds above 0 and "
                                 f"at most {MAX_LEASE_SECONDS:,}", self.lease_seconds)
        if not (isinstance(self.settle_seconds, int | float) and math.isfinite(
                self.settle_seconds) and 0 <= self.settle_seconds <= MAX_LEASE_SECONDS):
            raise ParameterError("settle_seconds", "expected a finite number of seconds >= 0",
                                 self.settle_seconds)

    @classmethod
    def for_subset(cls, experiment_dir: str, subset: str, **settings) -> Claims:
        """Claims on the runs of `subset` of an experiment."""
        return cls(layout_lib.ExperimentDir(experiment_dir).claims(subset), **settings)

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[Claims]:
        """Renews every held claim from a background thread while the block runs.

        The thread wakes every third of the lease, so claims stay live while the main
        thread is busy for long (compiling, training an epoch, writing checkpoints).
        """
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_seconds / 3):
                try:
                    self.renew(force=True)
                except tf.errors.OpError:
                    pass  # a missed beat: the next one, a third of a lease later, retries

        thread = threading.Thread(target=beat, name="claims-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def claim(self, run_ids: Iterable[int]) -> list[int]:
        """Claims every run among `run_ids` that nobody else holds; returns the claimed ones."""
        wanted = [r for r in run_ids if not self._held_by_other(r)]
        if not wanted:
            return []
        tf.io.gfile.makedirs(self.directory)
        for run_id in wanted:
            self._write(run_id)
        time.sleep(self.settle_seconds)
        won = [r for r in wanted if (self._read(r) or {}).get("token") == self.token]
        with self._lock:
            self.held.update(won)
            self._renewed = time.time()
        return won

    def renew(self, force: bool = False) -> None:
        """Extends the lease of every held claim if a third of it has passed (or `force`)."""
        with self._lock:
            if self.held and (force or time.time() - self._renewed > self.lease_seconds / 3):
                for run_id in sorted(self.held):
                    self._write(run_id)
                self._renewed = time.time()

    def release(self, run_ids: Iterable[int]) -> None:
        """Gives up the claims on `run_ids` (after writing them, or on failure)."""
        with self._lock:
            for run_id in list(run_ids):
                if run_id in self.held:
                    self.held.discard(run_id)
                    if (self._read(run_id) or {}).get("token") == self.token:
                        files.remove_quietly(self._path(run_id))

    def holder(self, run_id: int) -> str:
        """Who holds the claim on `run_id`: its task identity, else host and pid."""
        claim = self._read(run_id) or {}
        return claim.get("task") or f"{claim.get('host', '?')}:{claim.get('pid', '?')}"

    def _held_by_other(self, run_id: int) -> bool:
        claim = self._read(run_id)
        if not claim or claim.get("token") == self.token:
            return False
        expires = claim.get("expires")
        if not isinstance(expires, int | float) or not math.isfinite(expires) or (
                expires < time.time()):
            return False  # lease expired (the worker died or hangs), or a broken claim
        if self.task is not None and claim.get("task") == self.task:
            return False  # an earlier instance of this very task, preempted and requeued
        if claim.get("host") == socket.gethostname() and not process_alive(claim.get("pid")):
            return False  # a process of this host that is gone
        return True

    def _write(self, run_id: int) -> None:
        content = {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                   "task": self.task, "expires": time.time() + self.lease_seconds}
        files.write_json(self._path(run_id), content)

    def _read(self, run_id: int) -> dict | None:
        try:
            claim = files.read_json(self._path(run_id))
        except files.StoredFileError:
            return None
        return claim if isinstance(claim, dict) else None

    def _path(self, run_id: int) -> str:
        return layout_lib.claim_file(self.directory, run_id)
