"""The one retry policy: delays grow, stay within a floor and a cap, are jittered, reset."""

from __future__ import annotations

import itertools
import statistics

import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

from airflow_hitl.retry import Backoff, RetryPolicy


class TestRetryPolicy:
    def test_every_delay_lies_between_the_floor_and_a_window_that_doubles(self) -> None:
        policy = RetryPolicy(first=1.0, cap=1000.0)
        for attempt in range(1, 9):
            low, high = policy.bounds(attempt)
            assert (low, high) == (1.0, 2.0**attempt)
            for _ in range(200):
                assert low <= policy.delay(attempt) <= high

    def test_delays_grow_with_the_attempt(self) -> None:
        policy = RetryPolicy(first=1.0, cap=1000.0)
        means = [statistics.fmean(policy.delay(attempt) for _ in range(400)) for attempt in range(1, 7)]
        # Full jitter: the mean of attempt n is (1 + 2**n) / 2, so each is well above the last.
        assert all(later > earlier * 1.4 for earlier, later in itertools.pairwise(means)), means

    def test_the_cap_bounds_every_delay_however_many_attempts(self) -> None:
        policy = RetryPolicy(first=1.0, cap=30.0)
        delays = [policy.delay(attempt) for attempt in (6, 10, 64, 10_000) for _ in range(200)]
        assert all(1.0 <= d <= 30.0 for d in delays)
        assert max(delays) > 25.0, "the window reaches the cap"
        assert policy.bounds(10_000) == (1.0, 30.0)

    def test_delays_at_the_cap_are_jittered_too(self) -> None:
        # Callers that failed for minutes must not come back in lockstep either.
        policy = RetryPolicy(first=1.0, cap=30.0)
        assert len({policy.delay(50) for _ in range(20)}) == 20

    def test_two_sequences_differ(self) -> None:
        policy = RetryPolicy(first=1.0, cap=30.0)
        one = [policy.delay(attempt) for attempt in range(1, 8)]
        two = [policy.delay(attempt) for attempt in range(1, 8)]
        assert one != two
        assert one[0] != two[0], "even the first retry is jittered"

    def test_a_cap_below_the_floor_wins(self) -> None:
        policy = RetryPolicy(first=10.0, cap=2.0)
        assert {policy.delay(attempt) for attempt in (1, 2, 5)} == {2.0}

    def test_zero_means_at_once(self) -> None:
        policy = RetryPolicy(first=0.0, cap=0.0)
        assert {policy.delay(attempt) for attempt in (1, 3, 1000)} == {0.0}

    def test_tenacity_retrying_uses_the_same_wait(self) -> None:
        policy = RetryPolicy(first=0.001, cap=0.004)
        slept: list[float] = []
        calls = 0

        def flaky() -> str:
            nonlocal calls
            calls += 1
            if calls < 4:
                raise ConnectionError("store restarting")
            return "ok"

        retrying = Retrying(
            wait=policy.wait,
            stop=stop_after_attempt(5),
            retry=retry_if_exception_type(ConnectionError),
            sleep=slept.append,
        )
        assert retrying(flaky) == "ok"
        assert len(slept) == 3
        assert all(0.001 <= s <= 0.004 for s in slept)


class TestBackoff:
    def test_it_counts_failures_and_grows_until_reset(self) -> None:
        backoff = Backoff(first=1.0, cap=60.0)
        delays = [backoff.next() for _ in range(5)]
        assert backoff.failures == 5
        for attempt, delay in enumerate(delays, start=1):
            low, high = backoff.policy.bounds(attempt)
            assert low <= delay <= high
        backoff.reset()
        assert backoff.failures == 0
        assert 1.0 <= backoff.next() <= 2.0, "after a success the next failure starts over"

    @pytest.mark.parametrize("cap", [0.5, 5.0])
    def test_a_loop_never_waits_longer_than_its_cap(self, cap: float) -> None:
        backoff = Backoff(first=1.0, cap=cap)
        assert all(backoff.next() <= cap for _ in range(40))
