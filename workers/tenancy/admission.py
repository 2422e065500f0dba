"""New-customer admission: an optional allow-list and an optional limit on never-seen customers
per hour, so a producer cannot mint schemas and roles at will.

The decision is a function of (customer, the record's Kinesis arrival hour), made once for the
fleet in Redis (``admit.lua``) by whichever batcher or projector meets it first and read by the
others, so both roles refuse exactly the same events (the batcher dead-letters them, the
projector counts and skips them). A customer admitted once is admitted for every later hour.
Without an allow-list and a limit nothing is asked of Redis.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import redis

    from pipeline.core.settings import WorkerSettings

CUSTOMER_NOT_ALLOWED: Final = "customer_not_allowed"
TENANT_RATE_LIMITED: Final = "tenant_rate_limited"
HOUR_MS: Final = 3_600_000
_CACHE_MAX: Final = 100_000


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """``allowed`` empty = every customer; ``new_per_hour`` 0 = no limit; decisions are kept
    ``decision_ttl_s`` (longer than any lag between the roles: the stream's retention)."""

    allowed: frozenset[str] = frozenset()
    new_per_hour: int = 0
    decision_ttl_s: int = 8 * 24 * 3600

    @classmethod
    def parse(cls, allowed: str, new_per_hour: int, decision_ttl_s: int) -> AdmissionPolicy:
        """``allowed``: comma-separated ids, or ``@path`` to a file of ids (one a line)."""
        text = Path(allowed[1:]).read_text() if allowed.startswith("@") else allowed.replace(",", "\n")
        ids = frozenset(line.strip() for line in text.splitlines() if line.strip())
        if new_per_hour < 0:
            raise ValueError("new customers per hour must be ≥ 0")
        return cls(ids, new_per_hour, decision_ttl_s)


def refusal(policy: AdmissionPolicy, customer: str) -> tuple[str, str] | None:
    """The pure part: the allow-list's refusal (reason, detail), if any."""
    if policy.allowed and customer not in policy.allowed:
        return CUSTOMER_NOT_ALLOWED, f"customer {customer!r} is not in the allow-list"
    return None


class Admission:
    """Thread-safe; one per process. :meth:`check` → None (admitted) or (reason, detail)."""

    def __init__(
        self, policy: AdmissionPolicy, client: redis.Redis | None = None, namespace: str = ""
    ) -> None:
        if policy.new_per_hour and client is None:
            raise ValueError("a new-customer limit needs Redis (the fleet's shared decision)")
        self.policy, self.namespace = policy, namespace
        self._script = (
            client.register_script((Path(__file__).parent / "admit.lua").read_text()) if client else None
        )
        self._cache: dict[tuple[str, int], bool] = {}
        self._lock = threading.Lock()

    @property
    def admits_everyone(self) -> bool:
        """No allow-list and no limit: :meth:`check` is always None (hot loops skip the call)."""
        return not self.policy.allowed and not self.policy.new_per_hour

    @classmethod
    def everyone(cls) -> Admission:
        return cls(AdmissionPolicy())

    @classmethod
    def from_settings(cls, worker: WorkerSettings, client: redis.Redis, stream: str) -> Admission:
        policy = AdmissionPolicy.parse(
            worker.allowed_customers, worker.new_customers_per_hour, worker.tenant_decision_ttl_seconds
        )
        return cls(policy, client if policy.new_per_hour else None, stream)

    def check(self, customer: str, arrival_ms: int) -> tuple[str, str] | None:
        refused = refusal(self.policy, customer)
        if refused is not None or not self.policy.new_per_hour:
            return refused
        hour = arrival_ms // HOUR_MS
        with self._lock:
            ok = self._cache.get((customer, hour))
        if ok is None:
            ok = self._decide(customer, hour)
        if ok:
            return None
        return TENANT_RATE_LIMITED, (
            f"customer {customer!r} is new and the limit of {self.policy.new_per_hour} new customers "
            f"in hour {hour} is reached"
        )

    def _decide(self, customer: str, hour: int) -> bool:
        assert self._script is not None
        ns = self.namespace
        keys = [f"tenants:{ns}:decided:{hour}", f"tenants:{ns}:admitted", f"tenants:{ns}:new:{hour}"]
        args: list[str | int] = [customer, hour, self.policy.new_per_hour, self.policy.decision_ttl_s]
        ok = bool(int(self._script(keys=keys, args=args)))
        with self._lock:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[(customer, hour)] = ok
        return ok
