"""Multi-step Redis conversations written once, run over a sync or an asyncio client.

Invalidation, statistics and counter flushing each take several round trips whose
next commands depend on the last replies (SCAN cursors, versions). Each is written
as a generator that yields a batch of commands and receives their replies; the two
drivers below send every batch as one non-transactional pipeline. The hot path
(``GET`` per call) does not use this: it calls the client directly.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

import redis
import redis.asyncio

T = TypeVar("T")

Command = tuple[Any, ...]
Steps = Generator[list[Command], list[Any], T]


def run_sync(client: redis.Redis, steps: Steps[T]) -> T:
    """Drive ``steps`` with a sync client, one pipeline per yielded batch."""
    try:
        batch = next(steps)
        while True:
            replies: list[Any] = []
            if batch:
                pipe = client.pipeline(transaction=False)
                for command in batch:
                    pipe.execute_command(*command)
                try:
                    replies = pipe.execute()
                except Exception as error:  # let the conversation clean up, then re-raise
                    batch = steps.throw(error)
                    continue
            batch = steps.send(replies)
    except StopIteration as finished:
        result: T = finished.value
        return result


async def run_async(client: redis.asyncio.Redis, steps: Steps[T]) -> T:
    """Drive ``steps`` with an asyncio client, one pipeline per yielded batch."""
    try:
        batch = next(steps)
        while True:
            replies: list[Any] = []
            if batch:
                pipe = client.pipeline(transaction=False)
                for command in batch:
                    pipe.execute_command(*command)
                try:
                    replies = await pipe.execute()
                except Exception as error:
                    batch = steps.throw(error)
                    continue
            batch = steps.send(replies)
    except StopIteration as finished:
        result: T = finished.value
        return result
