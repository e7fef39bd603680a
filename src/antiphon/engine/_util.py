"""Small Trio helpers shared by the faces."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import trio

__all__ = ["open_nursery_unwrapped"]


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_nursery_unwrapped() -> AsyncIterator[trio.Nursery]:
    """A nursery from which a lone exception escapes as itself, not in an ExceptionGroup.

    ``open_*`` context managers own a nursery; without this, an error raised in the
    caller's ``async with`` body would reach the caller wrapped in a group. Several
    concurrent failures still escape as the group Trio built.
    """
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
