"""Storing job outcomes so that one bad report never blocks the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from hydrapool.backends.base import Backend, Finish

logger = logging.getLogger("hydrapool.worker")


async def store_finishes(
    backend: Backend, queue: str, finishes: Sequence[Finish], pauses: Sequence[float] = (0.0,)
) -> list[bool]:
    """Apply ``finishes`` in one batch (retried after each pause); if that keeps
    failing, one by one, dropping (and logging) the ones that cannot be stored."""
    for pause in pauses:
        await asyncio.sleep(pause)
        try:
            return list(await backend.job_finish_many(queue, finishes))
        except Exception:
            logger.exception("could not store %d job outcomes at once", len(finishes))
    applied: list[bool] = []
    for finish in finishes:
        try:
            applied += await backend.job_finish_many(queue, [finish])
        except Exception:
            logger.exception("dropping the outcome of job %s: it cannot be stored", finish.job_id)
            applied.append(False)
    return applied
