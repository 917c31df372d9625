"""The UDP sources' rate-limit table: a bucket per source, bounded, the oldest source forgotten."""

from __future__ import annotations

from engine.rate_limit import SourceRateLimit, TokenBucket


class TestTokenBucket:
    def test_refills_at_its_rate_up_to_the_burst(self) -> None:
        bucket = TokenBucket(rate=2.0, burst=2.0, now=0.0)
        assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
        assert bucket.take(0.5)  # one token back after half a second at 2/s
        assert not bucket.take(0.5)
        assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]  # never past burst


class TestSourceRateLimit:
    def test_each_source_has_its_own_bucket(self) -> None:
        limits = SourceRateLimit(1.0, 1.0, max_sources=10)
        assert limits.bucket(("192.0.2.1", 1000), 0.0).take(0.0)
        assert not limits.bucket(("192.0.2.1", 1000), 0.0).take(0.0)
        assert limits.bucket(("192.0.2.1", 1001), 0.0).take(0.0)  # same address, other port

    def test_the_table_is_bounded_and_forgets_the_source_heard_from_longest_ago(self) -> None:
        limits = SourceRateLimit(1.0, 1.0, max_sources=2)
        for port in (1, 2):
            assert limits.bucket(("192.0.2.1", port), 0.0).take(0.0)
        limits.bucket(("192.0.2.1", 1), 0.0)  # heard again: now the most recent
        assert limits.bucket(("192.0.2.1", 3), 0.0).take(0.0)
        assert len(limits) == 2
        # port 2 was forgotten (a full bucket again); then port 1 was; port 3 was kept (empty)
        assert limits.bucket(("192.0.2.1", 2), 0.0).take(0.0)
        assert len(limits) == 2
        assert not limits.bucket(("192.0.2.1", 3), 0.0).take(0.0)


class TestEmpty:
    def test_says_whether_the_next_frame_would_be_refused_without_taking_a_token(self) -> None:
        bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
        assert not bucket.empty(0.0)
        assert not bucket.empty(0.0)  # asking takes nothing
        assert bucket.take(0.0)
        assert bucket.empty(0.5)
        assert not bucket.empty(1.0)  # refilled at its rate
        assert bucket.take(1.0)
