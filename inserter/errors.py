"""The inserter's errors, classified where they enter (a SQL statement, an S3 read).

The service asks one question of a failed load: ``isinstance(exc, TransientError)`` — retry it
now, in-process — or not — give the message back to the queue, whose redrive policy
dead-letters it after ``maxReceiveCount`` receives. A *malformed* message is neither: it is
:class:`pipeline.core.manifest.ManifestError` and goes to the dead-letter queue at once.
"""

from __future__ import annotations

import psycopg

from pipeline.core.errors import TerminalError, TransientError


class LoadError(TerminalError):
    """An object cannot be loaded as it is (missing, unreadable, wrong columns or values)."""


class UnknownEventSchema(TerminalError):
    """A manifest names a type/version this inserter's registry does not know: deploy the newer
    definitions (the message waits in the queue, then the DLQ, until then)."""


#: SQLSTATE classes worth retrying: connection exceptions, transaction rollback (serialization
#: failure, deadlock), insufficient resources, operator intervention (admin shutdown, cancel,
#: statement/lock timeout), system errors.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
#: lock_not_available, object_in_use, read_only_sql_transaction (a standby mid-failover)
_TRANSIENT_STATES = frozenset({"55P03", "55006", "25006"})


class WarehouseRefused(TransientError):
    """The server answered and refused the connection's settings (no such database or role, a
    wrong password, no pg_hba entry). At start that is a setting to fix; while running, a
    password being rotated looks the same, so it is waited out like an outage."""


#: libpq's words for a server that answered and refused the connection's settings (its
#: connection errors carry no SQLSTATE). A server in another language falls back to an outage.
_REFUSALS = (
    "password authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "is not permitted to log in",
    "permission denied for database",
)


def refused_by_server(exc: BaseException) -> bool:
    text = str(exc)
    refusal = "FATAL:" in text and any(r in text for r in _REFUSALS)
    return isinstance(exc, psycopg.OperationalError) and refusal


def is_transient_pg(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # No SQLSTATE: the connection broke (server gone, socket reset, client-side timeout).
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


def classify_pg(exc: BaseException, what: str) -> TransientError | TerminalError:
    """Wrap a psycopg error, keeping the SQLSTATE and the server's first message line."""
    state = getattr(exc, "sqlstate", None) or type(exc).__name__
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    msg = f"{what}: {state}: {first}"
    if refused_by_server(exc):
        return WarehouseRefused(msg)
    if is_transient_pg(exc):
        return TransientError(msg)
    return TerminalError(msg)
