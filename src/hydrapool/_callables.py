"""Calling user code that may be sync or async, the same way everywhere."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True if calling ``fn`` returns an awaitable by declaration (async def, async __call__)."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004  # an async __call__ on an instance
    return not inspect.isroutine(fn) and call is not None and inspect.iscoroutinefunction(call)


async def call_maybe_async(fn: Callable[..., Any], *args: Any, in_thread: bool = True) -> Any:
    """Call ``fn``; await the result if it is awaitable.

    Plain (sync) callables run in a worker thread when ``in_thread`` is true,
    so a blocking hook never stalls the event loop.
    """
    if is_async_callable(fn) or not in_thread:
        result = fn(*args)
    else:
        result = await asyncio.to_thread(fn, *args)
    if inspect.isawaitable(result):
        result = await result
    return result
