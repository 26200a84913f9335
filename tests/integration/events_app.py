"""Helper processes for the events and schedules tests.

``python events_app.py listen DB_URL QUEUE OUT``: writes every event it sees
to OUT as JSON lines (``OUT.ready`` appears once it is subscribed).
``python events_app.py coordinate DB_URL QUEUE OUT``: declares an
every-second schedule and runs a coordinator until SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import hydrapool as hp


async def listen(queue: hp.Queue, out: Path) -> None:
    async with queue.events() as stream:
        out.with_suffix(".ready").write_text("ready")
        async for event in stream:
            with out.open("a") as f:
                f.write(json.dumps(asdict(event)) + "\n")


async def coordinate(queue: hp.Queue, out: Path) -> None:
    await queue.schedule("tick", every=1, task="tick")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    out.with_suffix(".ready").write_text("ready")
    await hp.Coordinator(queue, interval=0.1).run(stop)


async def main() -> None:
    mode, url, name, out = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    async with hp.Queue(url, name=name) as queue:
        await (listen if mode == "listen" else coordinate)(queue, out)


if __name__ == "__main__":
    asyncio.run(main())
