"""Redis URLs: every accepted form parses to the target it names; anything else is refused with a
ConfigurationError that names what was wrong and never shows a password."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from burr_dist.errors import ConfigurationError
from burr_dist.transport.urls import parse_url, redact


@pytest.mark.parametrize(
    ("url", "topology", "hosts", "db", "options"),
    [
        ("redis://h:7000/3", "single", (("h", 7000),), 3, {}),
        ("redis://h", "single", (("h", 6379),), 0, {}),
        ("redis://[::1]:6380/0?socket_timeout=2.5", "single", (("::1", 6380),), 0, {"socket_timeout": 2.5}),
        ("redis+cluster://a:1,b:2?wait_replicas=1", "cluster", (("a", 1), ("b", 2)), 0, {"wait_replicas": 1}),
        ("redis+sentinel://s:26379/mymaster/2", "sentinel", (("s", 26379),), 2, {}),
        ("rediss://h:1?ssl_check_hostname=TRUE&ssl_cert_reqs=none", "single", (("h", 1),), 0,
         {"ssl_check_hostname": "true", "ssl_cert_reqs": "none"}),
    ],
)  # fmt: skip
def test_accepted_forms(url: str, topology: str, hosts: tuple, db: int, options: dict) -> None:
    t = parse_url(url)
    assert (t.topology, t.hosts, t.db, t.options) == (topology, hosts, db, options)


def test_credentials_and_unix_socket() -> None:
    t = parse_url("unix://app:s%40cret@/run/redis.sock?db=4")
    assert (t.path, t.db, t.username, t.password) == ("/run/redis.sock", 4, "app", "s@cret")
    assert "s%40cret" not in t.redacted and "s@cret" not in t.redacted


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("localhost:6379", "expected scheme://"),
        ("http://h:1", "unknown scheme 'http'"),
        ("redis://h:1?socket_timeout=nan", "socket_timeout must be a finite number of seconds > 0"),
        ("redis://h:1?socket_timeout=inf", "socket_timeout must be a finite number of seconds > 0"),
        ("redis://h:1?socket_timeout=0", "socket_timeout must be a finite number of seconds > 0"),
        ("redis://h:1?socket_timeout=-1", "socket_timeout must be a finite number of seconds > 0"),
        ("redis://h:1?socket_timeout=soon", "socket_timeout must be a number"),
        ("redis://h:1?wait_replica=1", "unknown option 'wait_replica'"),
        ("redis://h:1?wait_replicas=-1", "wait_replicas must be an integer >= 0"),
        ("redis://h:1?wait_replicas=1&wait_replicas=2", "option 'wait_replicas' is given twice"),
        ("redis://h:1?ssl_ca_certs=/ca.pem", "ssl_* options need a TLS scheme"),
        ("rediss://h:1?ssl_check_hostname=maybe", "ssl_check_hostname must be one of"),
        ("redis://h:99999", "out of range"),
        ("redis://h:٣", "is not a number"),
        ("redis://h:1/²", "is not a database number"),
        ("redis://a:1,b:2", "several hosts need"),
        ("redis+cluster://a:1/2", "a Cluster URL has no path"),
        ("redis+sentinel://s:1", "a Sentinel URL names its service"),
        ("unix://relative.sock", "absolute socket path"),
    ],
)
def test_refused_forms_name_the_problem(url: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid Redis URL") as e:
        parse_url(url)
    assert named in str(e.value)


@settings(max_examples=400, deadline=None)
@given(
    scheme=st.sampled_from(["redis", "rediss", "unix", "redis+cluster", "redis+sentinel", "http", ""]),
    rest=st.text(max_size=40),
)
def test_any_string_parses_or_is_refused_without_showing_the_password(scheme: str, rest: str) -> None:
    url = f"{scheme}://user:Hunter2Secret@{rest}"
    try:
        target = parse_url(url)
    except ConfigurationError as e:
        assert "Hunter2Secret" not in str(e) and "Hunter2Secret" not in repr(e.context)
    else:
        assert "Hunter2Secret" not in target.redacted and "Hunter2Secret" not in repr(target)
        assert target.topology in ("single", "cluster", "sentinel")
    assert "Hunter2Secret" not in redact(url)


def test_a_url_without_a_scheme_does_not_echo_its_credentials() -> None:
    with pytest.raises(ConfigurationError, match="expected scheme://") as e:
        parse_url("user:Hunter2Secret@host:6379")
    assert "Hunter2Secret" not in str(e.value) and "Hunter2Secret" not in repr(e.value.context)


def test_redact_hides_what_the_parser_reads_as_a_password() -> None:
    assert redact("redis://u:pa/ss@h:1/0") == "redis://u:***@h:1/0"
    assert (
        redact("redis+sentinel://s:1/m?sentinel_password=x&db=1")
        == "redis+sentinel://s:1/m?sentinel_password=***&db=1"
    )
