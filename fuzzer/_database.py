"""Hypothesis's example database for ``run --db``: a local directory, or Redis shared by machines."""

from __future__ import annotations

import urllib.parse

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

from fuzzer._errors import UsageError

REDIS_SCHEMES = ("redis", "rediss")
#: Seconds to wait for a Redis server to answer before calling the option bad.
CONNECT_TIMEOUT = 5.0


def is_redis(spec: str) -> bool:
    return urllib.parse.urlsplit(spec).scheme in REDIS_SCHEMES


def check_spec(spec: str) -> None:
    """Reject a malformed ``--db`` value, or one whose support is not installed, as a usage error."""
    if not is_redis(spec):
        if "://" in spec:
            raise UsageError(f"--db {spec}: unknown database URL scheme; use a directory path,"
                             " redis://HOST:PORT[/DB] or none")
        return
    parts = urllib.parse.urlsplit(spec)
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"--db {spec}: the port must be a number from 0 to 65535") from None
    if not parts.hostname or port is None:
        raise UsageError(f"--db {spec}: expected redis://HOST:PORT[/DB]")
    if parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise UsageError(f"--db {spec}: the database after the port must be a number, not"
                         f" {parts.path.strip('/')!r}")
    try:
        import redis  # noqa: F401  (an optional extra)
    except ImportError:
        raise UsageError(f"--db {spec} needs the redis client: pip install 'ppc-kernel-fuzzer[redis]'"
                         ) from None


def open_database(spec: str, *, ping: bool = True) -> ExampleDatabase:
    """The database ``spec`` names: a directory, or a Redis server shared by every machine.

    A Redis server that does not answer is a usage error (``ERROR: --db ...``),
    found before the campaign starts rather than at its first save.
    """
    check_spec(spec)
    if not is_redis(spec):
        return DirectoryBasedExampleDatabase(spec)
    import redis
    from hypothesis.extra.redis import RedisExampleDatabase

    client = redis.Redis.from_url(spec, socket_connect_timeout=CONNECT_TIMEOUT,
                                  socket_timeout=CONNECT_TIMEOUT * 6)
    if ping:
        try:
            client.ping()
        except redis.RedisError as exc:
            raise UsageError(f"--db {spec}: cannot reach the Redis server: {exc}") from None
    return RedisExampleDatabase(client)
