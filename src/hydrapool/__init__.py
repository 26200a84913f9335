"""hydrapool: limit and schedule asynchronous work, from one event loop to a fleet.

The public names are exactly ``__all__``; everything else is private.
"""

from hydrapool._handle import TaskHandle, TaskState
from hydrapool.batcher import Batcher, BatcherStatistics, FailedBatch
from hydrapool.clock import Clock, ManualClock, SystemClock
from hydrapool.cron import Cron
from hydrapool.exceptions import (
    Closed,
    DependencyError,
    Fail,
    HydrapoolError,
    JobFailed,
    LeaseExpired,
    PayloadError,
    PoolClosed,
    PoolFull,
    ReportRefused,
    RetryAfter,
)
from hydrapool.pool import DrainResult, Pool, PoolStatistics
from hydrapool.queue.coordinator import Coordinator, CoordinatorReport
from hydrapool.queue.events import Event, EventType
from hydrapool.queue.external import Lease
from hydrapool.queue.job import Job, JobState
from hydrapool.queue.limiter import Limiter, LimiterStatistics, Permit
from hydrapool.queue.queue import Channel, Queue, QueueSnapshot, Task, TaskCall
from hydrapool.queue.schedules import Schedule
from hydrapool.queue.worker import Worker, WorkerStatistics
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
    "Channel",
    "Clock",
    "Closed",
    "Coordinator",
    "CoordinatorReport",
    "Cron",
    "Decision",
    "DependencyError",
    "DrainResult",
    "Event",
    "EventType",
    "Fail",
    "FailedBatch",
    "GroupStatistics",
    "HydrapoolError",
    "Job",
    "JobFailed",
    "JobState",
    "JobStatistics",
    "Lease",
    "LeaseExpired",
    "Limiter",
    "LimiterStatistics",
    "ManualClock",
    "PayloadError",
    "Permit",
    "Pool",
    "PoolClosed",
    "PoolFull",
    "PoolStatistics",
    "Queue",
    "QueueSnapshot",
    "RateLimit",
    "Reply",
    "ReportRefused",
    "Reschedule",
    "Retry",
    "RetryAfter",
    "Schedule",
    "Scheduler",
    "SchedulerStatistics",
    "StopGroup",
    "StopScheduler",
    "StopWorker",
    "SystemClock",
    "Task",
    "TaskCall",
    "TaskHandle",
    "TaskState",
    "Unschedule",
    "Worker",
    "WorkerGroup",
    "WorkerStatistics",
]
