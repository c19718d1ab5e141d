"""The one retry policy: exponential backoff with full jitter, a floor and a cap (tenacity).

Every reconnect and retry loop of the package waits as this module says: the LISTEN
connections (outbox drainer, gate closer, the triggerer's poller), the poller's reads, the
drainer's store backoff and the retries of a failed notice. The delays come from tenacity's
``wait_random_exponential`` ("Full Jitter"): attempt ``n`` waits a random time between
``first`` (the floor) and ``min(cap, first * 2**n)``. Jitter matters because the callers are
many and start together: every triggerer, api-server and worker of a deployment loses the
store at the same moment when it restarts, and without jitter they would all come back at the
same instants. The floor keeps the documented meaning of the options that set it
(``notify_retry_backoff``: "seconds before the first retry"), the cap is the option that bounds
it (``store_retry_max_backoff``, ``notify_retry_max_backoff``).

Code that retries a call can hand :attr:`RetryPolicy.wait` to ``tenacity.Retrying``; a loop
that runs for the life of a process and waits on a stop event instead keeps a
:class:`Backoff`: ``next()`` after a failure, ``reset()`` after a success.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tenacity import RetryCallState
from tenacity.wait import wait_base, wait_random_exponential


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter between a floor and a cap.

    :param first: The floor, in seconds: no wait is shorter; the first is at most twice it.
    :param cap: No wait is longer (when below ``first``, every wait is ``cap``).
    """

    first: float = 1.0
    cap: float = 30.0
    wait: wait_base = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        floor = max(0.0, min(self.first, self.cap))
        # multiplier 2 * first: the window of attempt n is [first, first * 2**n], so even the
        # first wait is jittered (a window of width 0 would bring every caller back at once).
        strategy = wait_random_exponential(multiplier=2 * floor, min=floor, max=max(0.0, self.cap))
        object.__setattr__(self, "wait", strategy)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 for the first failure)."""
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        # Past 64 doublings every window is the cap's; tenacity need not compute 2**10000.
        state.attempt_number = min(max(1, attempt), 65)
        return float(self.wait(state))

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The shortest and longest :meth:`delay` of ``attempt`` (what tests and logs can rely on)."""
        floor = max(0.0, min(self.first, self.cap))
        high = min(max(0.0, self.cap), 2 * floor * 2 ** min(max(1, attempt) - 1, 64))
        return floor, max(floor, high)


class Backoff:
    """The delays of one long-running loop: longer after each failure, back to the start on success.

    :param first: The floor of :class:`RetryPolicy`.
    :param cap: The cap of :class:`RetryPolicy`.
    """

    def __init__(self, *, first: float = 1.0, cap: float = 30.0) -> None:
        self.policy = RetryPolicy(first=first, cap=cap)
        self.failures = 0

    def next(self) -> float:
        """Count a failure and return how long to wait before trying again."""
        self.failures += 1
        return self.policy.delay(self.failures)

    def reset(self) -> None:
        """It worked: the next failure waits as briefly as the first."""
        self.failures = 0
