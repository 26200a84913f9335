"""hydrapool: limit and schedule asynchronous work, from one event loop to a fleet.

The public names are exactly ``__all__``; everything else is private.
"""

from hydrapool._handle import TaskHandle, TaskState
from hydrapool.exceptions import HydrapoolError, PoolClosed, PoolFull, RetryAfter
from hydrapool.pool import DrainResult, Pool, PoolStatistics
from hydrapool.ratelimit import RateLimit
from hydrapool.retry import Backoff, Retry

__version__ = "0.1.0"

__all__ = [
    "Backoff",
    "DrainResult",
    "HydrapoolError",
    "Pool",
    "PoolClosed",
    "PoolFull",
    "PoolStatistics",
    "RateLimit",
    "Retry",
    "RetryAfter",
    "TaskHandle",
    "TaskState",
]
