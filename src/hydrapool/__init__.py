"""hydrapool: limit and schedule asynchronous work, from one event loop to a fleet.

The public names are exactly ``__all__``; everything else is private.
"""

from hydrapool._handle import TaskHandle, TaskState
from hydrapool.batcher import Batcher, BatcherStatistics, FailedBatch
from hydrapool.clock import Clock, ManualClock, SystemClock
from hydrapool.cron import Cron
from hydrapool.exceptions import Closed, HydrapoolError, PoolClosed, PoolFull, RetryAfter
from hydrapool.pool import DrainResult, Pool, PoolStatistics
from hydrapool.ratelimit import RateLimit
from hydrapool.retry import Backoff, Retry
from hydrapool.scheduler import (
    JobStatistics,
    Reschedule,
    Scheduler,
    SchedulerStatistics,
    StopScheduler,
    Unschedule,
)
from hydrapool.workers import (
    Decision,
    GroupStatistics,
    Reply,
    StopGroup,
    StopWorker,
    WorkerGroup,
)

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "Batcher",
    "BatcherStatistics",
    "Clock",
    "Closed",
    "Cron",
    "Decision",
    "DrainResult",
    "FailedBatch",
    "GroupStatistics",
    "HydrapoolError",
    "JobStatistics",
    "ManualClock",
    "Pool",
    "PoolClosed",
    "PoolFull",
    "PoolStatistics",
    "RateLimit",
    "Reply",
    "Reschedule",
    "Retry",
    "RetryAfter",
    "Scheduler",
    "SchedulerStatistics",
    "StopGroup",
    "StopScheduler",
    "StopWorker",
    "SystemClock",
    "TaskHandle",
    "TaskState",
    "Unschedule",
    "WorkerGroup",
]
