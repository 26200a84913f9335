"""Helper processes for the events and schedules tests.

``python events_app.py listen DB_URL QUEUE OUT``: writes every event it sees
to OUT as JSON lines (``OUT.ready`` appears once it is subscribed); when the
store goes away, it resumes after the last event it wrote.
``python events_app.py every|cron DB_URL QUEUE OUT``: declares a schedule ticking
every second (``every=1``, or the cron ``* * * * * *``) and runs a coordinator
until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydrapool as hp


async def listen(queue: hp.Queue, out: Path) -> None:
    cursor: int | None = None
    while True:
        try:
            async with queue.events(after=cursor) as stream:
                cursor = stream.cursor
                out.with_suffix(".ready").write_text("ready")
                async for event in stream:
                    with out.open("a") as f:
                        f.write(json.dumps(asdict(event)) + "\n")
                    cursor = event.seq
        except Exception:
            # The store went away (a Redis restart): a stream ends with the driver's
            # error, so resume after the last event written, as docs/queue.md says.
            logging.exception("the event stream broke; resuming after %s", cursor)
            await asyncio.sleep(0.05)  # back-off while the server is down


TIMINGS: dict[str, dict[str, Any]] = {"every": {"every": 1}, "cron": {"cron": "* * * * * *"}}


async def coordinate(queue: hp.Queue, out: Path, timing: dict[str, Any]) -> None:
    await queue.schedule("tick", task="tick", **timing)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    out.with_suffix(".ready").write_text("ready")
    await hp.Coordinator(queue, interval=0.02).run(stop)


async def main() -> None:
    mode, url, name, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    async with hp.Queue(url, name=name) as queue:
        if mode == "listen":
            await listen(queue, out)
        else:
            await coordinate(queue, out, TIMINGS[mode])


if __name__ == "__main__":
    asyncio.run(main())
