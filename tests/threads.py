"""Calls run at once, as two workers (or a worker and the web server) would run them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def run_at_once(*calls: Callable[[], Any], timeout: float = 60) -> list[Any]:
    """Run each call in its own thread — so its own database connection — all released
    together; return their results in order. A call's exception fails the caller (a thread's
    exception is otherwise lost), as does a call still running after `timeout` seconds."""
    from django.db import connection

    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout=10)
            results[index] = call()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), f"still running after {timeout} s"
    assert not errors, errors
    return results
