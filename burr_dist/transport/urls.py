"""Redis URLs: one string names a server, a Cluster or a Sentinel-managed master.

Accepted forms (``s`` variants use TLS)::

    redis[s]://[user:password@]host:port[/db][?options]
    unix://[user:password@]/path/to/socket[?db=N&options]
    redis[s]+cluster://[user:password@]host:port[,host:port...][/][?options]
    redis[s]+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?options]

Options (query string): ``wait_replicas``, ``wait_timeout_ms`` (replication confirmation, see
docs/guides/topologies.md), ``socket_timeout``, ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (required|optional|none), ``ssl_check_hostname``,
``sentinel_username``, ``sentinel_password`` (when the sentinels have their own credentials),
``db``. Anything else is refused with an error naming it, so a typo cannot silently turn
replication confirmation off.

Passwords never leave this module in clear: :func:`redact` is what logs and errors show.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

from burr_dist.errors import ConfigurationError

Topology = Literal["single", "cluster", "sentinel"]

_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
}
_INT_OPTIONS = ("wait_replicas", "wait_timeout_ms", "db")
_FLOAT_OPTIONS = ("socket_timeout",)
_STR_OPTIONS = (
    "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
    "sentinel_username", "sentinel_password",
)  # fmt: skip
_SECRET_OPTIONS = ("sentinel_password",)
_CERT_REQS = ("required", "optional", "none")
_BOOLEANS = frozenset({"1", "0", "true", "false", "yes", "no"})


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. ``hosts`` is empty for a unix socket (then ``path`` is set)."""

    topology: Topology
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    path: str | None = None
    service: str | None = None  # Sentinel service name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict, repr=False)
    redacted: str = ""

    @property
    def wait_replicas(self) -> int | str | None:
        return self.options.get("wait_replicas")

    @property
    def wait_timeout_ms(self) -> int | None:
        return self.options.get("wait_timeout_ms")

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for redis-py connections (auth and TLS)."""
        kw: dict[str, Any] = {}
        if self.username is not None:
            kw["username"] = self.username
        if self.password is not None:
            kw["password"] = self.password
        if self.tls:
            kw["ssl"] = True
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
                if name in self.options:
                    kw[name] = self.options[name]
            if "ssl_cert_reqs" in self.options:
                kw["ssl_cert_reqs"] = self.options["ssl_cert_reqs"]
            if "ssl_check_hostname" in self.options:
                kw["ssl_check_hostname"] = self.options["ssl_check_hostname"] in ("1", "true", "yes")
        return kw


def redact(url: str) -> str:
    """The URL with its password (and any secret option) replaced by ``***``. It splits the URL
    the way :func:`parse_url` does, so whatever that would read as a password is hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, q, query = rest.partition("?")
    userinfo, at, location = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    for name in _SECRET_OPTIONS:
        query = re.sub(rf"(^|&)({name}=)[^&]*", r"\1\2***", query)
    return f"{scheme}{sep}{userinfo}{at}{location}{q}{query}"


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() and int() also take other scripts' digits and superscripts."""
    return re.fullmatch(r"[0-9]{1,18}", text) is not None


def _bad(url: str, why: str, **context: Any) -> ConfigurationError:
    return ConfigurationError(f"invalid Redis URL {redact(url)!r}: {why}", url=redact(url), **context)


def _host_port(url: str, item: str) -> tuple[str, int]:
    if item.startswith("["):  # [::1]:6379
        host, _, port = item[1:].partition("]:")
    else:
        host, _, port = item.rpartition(":")
        if not host:
            host, port = item, "6379"
    if not host:
        raise _bad(url, f"empty host in {item!r}")
    if not _is_number(port):
        raise _bad(url, f"port of {item!r} is not a number")
    number = int(port)
    if not 0 < number < 65536:
        raise _bad(url, f"port of {item!r} is out of range")
    return host, number


def _userinfo(rest: str) -> tuple[str | None, str | None, str]:
    """(username, password, location) of the part after ``scheme://``."""
    userinfo, at, location = rest.rpartition("@")
    if not at:
        return None, None, rest
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, (unquote(secret) if colon else None), location


def _option(url: str, name: str, value: str) -> Any:
    if name == "wait_replicas" and value == "all":  # every online replica of the node
        return "all"
    if name in _INT_OPTIONS:
        if not _is_number(value):
            raise _bad(url, f"option {name} must be an integer >= 0, got {value!r}", option=name)
        return int(value)
    if name in _FLOAT_OPTIONS:
        try:
            seconds = float(value)
        except ValueError:
            raise _bad(url, f"option {name} must be a number, got {value!r}", option=name) from None
        if not math.isfinite(seconds) or seconds <= 0:  # redis-py would block for ever or fail late
            raise _bad(
                url, f"option {name} must be a finite number of seconds > 0, got {value!r}", option=name
            )
        return seconds
    if name in _STR_OPTIONS:
        if name == "ssl_cert_reqs" and value not in _CERT_REQS:
            raise _bad(url, f"ssl_cert_reqs must be one of {_CERT_REQS}, got {value!r}", option=name)
        if name == "ssl_check_hostname" and value.lower() not in _BOOLEANS:
            raise _bad(
                url, f"ssl_check_hostname must be one of {sorted(_BOOLEANS)}, got {value!r}", option=name
            )
        return value.lower() if name == "ssl_check_hostname" else value
    raise _bad(url, f"unknown option {name!r}", option=name)


def _options(url: str, query: str, tls: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in options:  # which one would win is not obvious to whoever reads the URL
            raise _bad(url, f"option {name!r} is given twice", option=name)
        options[name] = _option(url, name, value)
    if any(n.startswith("ssl_") for n in options) and not tls:
        raise _bad(url, "ssl_* options need a TLS scheme (rediss://, rediss+cluster://, rediss+sentinel://)")
    return options


def parse_url(url: str) -> RedisTarget:
    """Parse and validate a Redis URL; errors name what is wrong (with the password redacted)."""
    if not isinstance(url, str) or "://" not in url:
        shown = str(url) if "@" not in str(url) else "***@" + str(url).rpartition("@")[2]
        raise ConfigurationError(f"invalid Redis URL {shown!r}: expected scheme://...", url=shown)
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise _bad(url, f"unknown scheme {scheme!r}; use one of {', '.join(_SCHEMES)}", scheme=scheme)
    topology, tls = _SCHEMES[scheme]
    rest, _, query = rest.partition("?")
    username, password, location = _userinfo(rest)
    options = _options(url, query, tls)
    db = options.pop("db", 0)
    common: dict[str, Any] = {"tls": tls, "username": username, "password": password, "redacted": redact(url)}
    if scheme == "unix":
        if not location.startswith("/"):
            raise _bad(url, "unix:// needs an absolute socket path")
        return RedisTarget("single", path=location, hosts=(), db=db, options=options, **common)
    hosts_part, _, path = location.partition("/")
    if not hosts_part:
        raise _bad(url, "no host given")
    hosts = tuple(_host_port(url, h) for h in hosts_part.split(","))
    segments = [s for s in path.split("/") if s]
    if topology == "single":
        return _single(url, hosts, segments, db, options, common)
    if topology == "cluster":
        if segments:
            raise _bad(url, "a Cluster URL has no path (Cluster has only database 0)")
        if db:
            raise _bad(url, "Redis Cluster has only database 0")
        return RedisTarget("cluster", hosts=hosts, db=0, options=options, **common)
    return _sentinel(url, hosts, segments, path, db, options, common)


def _single(
    url: str, hosts: tuple[tuple[str, int], ...], segments: list[str], db: int, options: dict[str, Any],
    common: dict[str, Any],
) -> RedisTarget:  # fmt: skip
    if len(hosts) > 1:
        raise _bad(url, "several hosts need redis+cluster:// or redis+sentinel://")
    if segments:
        if len(segments) > 1 or not _is_number(segments[0]):
            raise _bad(url, f"path {'/'.join(segments)!r} is not a database number")
        db = int(segments[0])
    return RedisTarget("single", hosts=hosts, db=db, options=options, **common)


def _sentinel(
    url: str, hosts: tuple[tuple[str, int], ...], segments: list[str], path: str, db: int,
    options: dict[str, Any], common: dict[str, Any],
) -> RedisTarget:  # fmt: skip
    if not segments:
        raise _bad(url, "a Sentinel URL names its service: redis+sentinel://host:port/service_name")
    if len(segments) > 2 or (len(segments) == 2 and not _is_number(segments[1])):
        raise _bad(url, f"path {path!r} is not service_name[/db]")
    if len(segments) == 2:
        db = int(segments[1])
    return RedisTarget(
        "sentinel", hosts=hosts, service=unquote(segments[0]), db=db, options=options, **common
    )
