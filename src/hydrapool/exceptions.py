"""Every error hydrapool raises on purpose.

The tree::

    HydrapoolError                 root: catch this to catch anything of ours
    ├── Closed                     new work for a Batcher/WorkerGroup/... that was closed
    │   └── PoolClosed             add()/put() on a pool that no longer takes tasks
    ├── PoolFull                   add() while the backlog holds max_pending tasks
    ├── RetryAfter                 raised BY a task: pause the pool, rerun the task
    ├── PayloadError               a job's arguments or result are not JSON
    ├── DependencyError            depends_on names an unknown job or one that started
    ├── Fail                       raised BY a durable task: fail now (optionally no retry)
    ├── JobFailed                  job.result() of a job that failed, was cancelled or dropped
    └── ReportRefused              finish_job/fail_job/extend_lease without a valid lease

Bad arguments raise the built-in ``TypeError`` or ``ValueError`` with a message
that names the value and the rule it broke.
"""

from __future__ import annotations

__all__ = [
    "Closed",
    "DependencyError",
    "Fail",
    "HydrapoolError",
    "JobFailed",
    "PayloadError",
    "PoolClosed",
    "PoolFull",
    "ReportRefused",
    "RetryAfter",
]


class HydrapoolError(Exception):
    """Something hydrapool refused or could not do."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class Closed(HydrapoolError):
    """This object is closed: it takes no new work."""


class PoolClosed(Closed):
    """The pool is closed: it takes no new tasks."""


class PoolFull(HydrapoolError):
    """The pool's backlog is full (max_pending tasks wait already); use ``await pool.put()``."""


class RetryAfter(HydrapoolError):
    """The task asks to be run again after ``seconds``, e.g. on an HTTP 429.

    Raised from inside a task. The pool starts no new task for ``seconds``
    (tasks already running go on) and then reruns this task, without spending
    one of its retry attempts::

        async def fetch(url):
            response = await client.get(url)
            if response.status_code == 429:
                raise hp.RetryAfter.from_headers(response.headers) or hp.RetryAfter(1.0)
            return response.json()
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"RetryAfter seconds must be a number, got {seconds!r}")
        if not seconds >= 0 or seconds == float("inf"):
            raise ValueError(f"RetryAfter seconds must be finite and >= 0, got {seconds!r}")
        self.seconds = float(seconds)
        super().__init__(f"retry after {self.seconds:g}s")

    @classmethod
    def from_headers(cls, headers: object, *, now: float | None = None) -> RetryAfter | None:
        """Read a rate-limit hint from HTTP response headers, or return None.

        Understands ``Retry-After`` (seconds or an HTTP date) and, when
        ``X-RateLimit-Remaining`` is 0, ``X-RateLimit-Reset`` (epoch seconds,
        as GitHub sends it). ``headers`` is any mapping with ``.get`` (the
        lookup tries the name as given and in lower case); ``now`` is the
        current epoch time, for tests.
        """
        from hydrapool._headers import retry_after_seconds

        seconds = retry_after_seconds(headers, now=now)
        return None if seconds is None else cls(seconds)


class PayloadError(HydrapoolError, TypeError):
    """A value cannot be stored: job arguments and results must be JSON."""


class Fail(HydrapoolError):
    """Raised by a durable task to fail its try on purpose.

    ``Fail("card declined", cancel_retries=True)`` ends the job ``failed`` at
    once, whatever attempts remain (HydraMQ's setFail); without
    ``cancel_retries`` it counts as an ordinary failed try.
    """

    def __init__(self, message: str = "the task failed", *, cancel_retries: bool = False) -> None:
        self.cancel_retries = cancel_retries
        super().__init__(message)


class JobFailed(HydrapoolError):
    """The job ended without a result: ``state`` says how, ``error`` why."""

    def __init__(self, job_id: str, state: str, error: str | None) -> None:
        self.job_id = job_id
        self.state = state
        self.error = error
        super().__init__(f"job {job_id} ended {state}" + (f": {error}" if error else ""))


class DependencyError(HydrapoolError, ValueError):
    """A job may depend only on existing jobs of its queue that have not started."""


class ReportRefused(HydrapoolError):
    """A report on a claimed job was refused: the caller holds no valid lease on it.

    Raised by ``queue.finish_job``, ``queue.fail_job`` and ``queue.extend_lease``
    when the job is unknown, was never claimed with that lease, or its lease
    expired (the coordinator may have retried or failed it meanwhile). The job
    is left as it was: a refused report never ends a job. ``job_id`` names the
    job, ``reason`` says why.
    """

    def __init__(self, job_id: str, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id}: report refused: {reason}")


class LeaseExpired(HydrapoolError):
    """A Limiter permit's lease ended before its release: others may have been let in
    meanwhile (raised when an ``async with limiter.acquire()`` block ends)."""
