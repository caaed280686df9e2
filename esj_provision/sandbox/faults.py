"""Faults on demand: latency, per-service token-bucket throttling, random and queued faults.

Everything random draws from one seeded ``random.Random`` owned by the server, so a run with the
same ``--seed`` and the same request sequence injects the same faults.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("503", "429", "504-after-apply", "reset-before", "reset-after-apply")
RANDOM_FAULTS = ("503", "504-after-apply", "reset-before", "reset-after-apply")
AFTER_APPLY = frozenset({"504-after-apply", "reset-after-apply"})
MATCH_KEYS = ("service", "method", "path", "cmdlet", "identity")
MAX_QUEUED = 10_000


class TokenBucket:
    """``rate`` requests per second with a burst of one second's worth (at least one request).

    ``take()`` returns None when the request may proceed, else the whole seconds to wait, which
    is what Retry-After carries (rounded up, at least 1: Retry-After: 0 would invite a hot loop).
    """

    def __init__(self, rate: float, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> int | None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


@dataclass
class QueuedFault:
    fault: str
    match: dict[str, str]
    count: int = 1
    retry_after: int | None = None

    def matches(self, info: dict[str, Any]) -> bool:
        for key, want in self.match.items():
            have = info.get(key)
            if have is None:
                return False
            if key == "path":
                if want.lower() not in str(have).lower():
                    return False
            elif str(have).lower() != want.lower():
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault, "match": self.match, "count": self.count, "retry_after": self.retry_after}


def parse_fault(spec: dict[str, Any]) -> QueuedFault:
    """Validate a ``POST /_sandbox/faults`` body. Raises ValueError with the reason."""
    if not isinstance(spec, dict):
        raise ValueError("the body must be a JSON object")
    fault = spec.get("fault")
    if fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
    match = spec.get("match") or {}
    if not isinstance(match, dict) or any(k not in MATCH_KEYS or not isinstance(v, str) for k, v in match.items()):
        raise ValueError(f"match must be an object with string values for: {', '.join(MATCH_KEYS)}")
    count = spec.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_QUEUED:
        raise ValueError(f"count must be an integer 1..{MAX_QUEUED}")
    retry_after = spec.get("retry_after")
    if retry_after is not None and (not isinstance(retry_after, int) or isinstance(retry_after, bool)
                                    or not 0 <= retry_after <= 3600):
        raise ValueError("retry_after must be an integer 0..3600 (seconds)")
    return QueuedFault(str(fault), dict(match), count, retry_after)


@dataclass
class Faults:
    rng: random.Random
    latency_ms: tuple[int, int] = (0, 0)
    fault_rate: float = 0.0
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    queue: list[QueuedFault] = field(default_factory=list)

    @classmethod
    def create(cls, seed: int, latency_ms: tuple[int, int], fault_rate: float,
               rates: dict[str, float | None]) -> Faults:
        # One bucket per service, as Graph and Exchange throttle independently.
        buckets = {service: TokenBucket(rps) for service, rps in rates.items() if rps}
        return cls(random.Random(seed), latency_ms, fault_rate, buckets)

    def latency(self) -> float:
        lo, hi = self.latency_ms
        if hi <= 0:
            return 0.0
        return (lo if lo == hi else self.rng.randint(lo, hi)) / 1000.0

    def take(self, service: str) -> int | None:
        bucket = self.buckets.get(service)
        return bucket.take() if bucket else None

    def enqueue(self, fault: QueuedFault) -> None:
        if len(self.queue) >= MAX_QUEUED:
            raise ValueError(f"at most {MAX_QUEUED} queued faults")
        self.queue.append(fault)

    def pick(self, info: dict[str, Any], random_ok: bool) -> tuple[str, int | None] | None:
        """The fault to inject into this request, if any: queued ones first (deterministic), then
        a random one with probability ``fault_rate``."""
        for q in self.queue:
            if q.matches(info):
                q.count -= 1
                if q.count <= 0:
                    self.queue.remove(q)
                return q.fault, q.retry_after
        if random_ok and self.fault_rate > 0 and self.rng.random() < self.fault_rate:
            return self.rng.choice(RANDOM_FAULTS), None
        return None
