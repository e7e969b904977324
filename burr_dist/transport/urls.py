"""Redis URLs: one string names a server, a Cluster or a Sentinel-managed master.

Accepted forms (``s`` variants use TLS)::

    redis[s]://[user:password@]host:port[/db][?options]
    unix://[user:password@]/path/to/socket[?db=N&options]
    redis[s]+cluster://[user:password@]host:port[,host:port...][/][?options]
    redis[s]+sentinel://[user:password@]host:port[,host:port...]/service_name[/db][?options]

Options (query string): ``wait_replicas``, ``wait_timeout_ms`` (replication confirmation, see
docs in README "Topologies"), ``socket_timeout``, ``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``, ``ssl_cert_reqs`` (required|optional|none), ``ssl_check_hostname``,
``sentinel_username``, ``sentinel_password`` (when the sentinels have their own credentials),
``db``. Anything else is refused with an error naming it, so a typo cannot silently turn
replication confirmation off.

Passwords never leave this module in clear: :func:`redact` is what logs and errors show.
"""

from __future__ import annotations

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
    def wait_replicas(self) -> int | None:
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
    """The URL with its password (and any secret option) replaced by ``***``."""
    m = re.match(r"^([a-z+]+://)([^@/]*@)?(.*)$", url, re.IGNORECASE)
    if m is None:
        return url
    scheme, userinfo, rest = m.group(1), m.group(2) or "", m.group(3)
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***@"
    for name in _SECRET_OPTIONS:
        rest = re.sub(rf"({name}=)[^&]*", r"\1***", rest)
    return scheme + userinfo + rest


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
    try:
        number = int(port)
    except ValueError:
        raise _bad(url, f"port of {item!r} is not a number") from None
    if not 0 < number < 65536:
        raise _bad(url, f"port of {item!r} is out of range")
    return host, number


def parse_url(url: str) -> RedisTarget:
    """Parse and validate a Redis URL; errors name what is wrong (with the password redacted)."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"invalid Redis URL {url!r}: expected scheme://...", url=url)
    scheme = url.split("://", 1)[0].lower()
    if scheme not in _SCHEMES:
        raise _bad(url, f"unknown scheme {scheme!r}; use one of {', '.join(_SCHEMES)}", scheme=scheme)
    topology, tls = _SCHEMES[scheme]
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    options: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _INT_OPTIONS:
            try:
                options[name] = int(value)
            except ValueError:
                raise _bad(url, f"option {name} must be an integer, got {value!r}", option=name) from None
            if options[name] < 0:
                raise _bad(url, f"option {name} must be >= 0, got {value!r}", option=name)
        elif name in _FLOAT_OPTIONS:
            try:
                options[name] = float(value)
            except ValueError:
                raise _bad(url, f"option {name} must be a number, got {value!r}", option=name) from None
        elif name in _STR_OPTIONS:
            if name == "ssl_cert_reqs" and value not in _CERT_REQS:
                raise _bad(url, f"ssl_cert_reqs must be one of {_CERT_REQS}", option=name)
            options[name] = value
        else:
            raise _bad(url, f"unknown option {name!r}", option=name)
    if any(n.startswith("ssl_") for n in options) and not tls:
        raise _bad(url, "ssl_* options need a TLS scheme (rediss://, rediss+cluster://, rediss+sentinel://)")
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
        if len(hosts) > 1:
            raise _bad(url, "several hosts need redis+cluster:// or redis+sentinel://")
        if segments:
            if len(segments) > 1 or not segments[0].isdigit():
                raise _bad(url, f"path {path!r} is not a database number")
            db = int(segments[0])
        return RedisTarget("single", hosts=hosts, db=db, options=options, **common)
    if topology == "cluster":
        if segments:
            raise _bad(url, "a Cluster URL has no path (Cluster has only database 0)")
        if db:
            raise _bad(url, "Redis Cluster has only database 0")
        return RedisTarget("cluster", hosts=hosts, db=0, options=options, **common)
    if not segments:
        raise _bad(url, "a Sentinel URL names its service: redis+sentinel://host:port/service_name")
    if len(segments) > 2 or (len(segments) == 2 and not segments[1].isdigit()):
        raise _bad(url, f"path {path!r} is not service_name[/db]")
    if len(segments) == 2:
        db = int(segments[1])
    return RedisTarget(
        "sentinel", hosts=hosts, service=unquote(segments[0]), db=db, options=options, **common
    )
