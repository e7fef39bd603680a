"""Small Trio helpers shared by the faces."""

from __future__ import annotations

import types
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
)
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

__all__ = ["around_suspensions", "continue_suspended", "open_nursery_unwrapped"]

T = TypeVar("T")


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


@types.coroutine
def around_suspensions(
    awaitable: Awaitable[T], on_suspend: Callable[[], object], on_resume: Callable[[], object]
) -> Generator[Any, Any, T]:
    """Await ``awaitable`` in this task, calling ``on_suspend`` each time it yields to Trio and ``on_resume`` after.

    Exactly ``await awaitable``, plus two hooks around each suspension: what a task must
    do before other tasks run (flush corked output) and when it runs again (cork it).
    Cancellation and every exception pass through unchanged.
    """
    inner = awaitable.__await__()
    send: Any = None
    error: BaseException | None = None
    while True:
        try:
            yielded = inner.send(send) if error is None else inner.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        on_suspend()
        try:
            send, error = (yield yielded), None
        except GeneratorExit:
            inner.close()
            raise
        except BaseException as exc:  # Trio delivering Cancelled, or a throw() from the caller
            send, error = None, exc
        on_resume()


@types.coroutine
def continue_suspended(
    coro: Coroutine[Any, Any, T], yielded: Any, on_suspend: Callable[[], object], on_resume: Callable[[], object]
) -> Generator[Any, Any, T]:
    """Go on awaiting ``coro``, which was driven by hand until it yielded ``yielded`` to Trio.

    ``yielded`` is handed to Trio first, as ``await`` would have; then as
    :func:`around_suspensions` (``on_suspend`` has already run for the first suspension).
    The caller drives a coroutine's first step itself when finishing without any
    suspension is the common case worth making cheap.
    """
    while True:
        try:
            send, error = (yield yielded), None
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            send, error = None, exc
        on_resume()
        try:
            yielded = coro.send(send) if error is None else coro.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        on_suspend()
