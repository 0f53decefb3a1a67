"""``HostGuard``: which Host names a server answers and which origins may change things."""

from __future__ import annotations

import pytest

from gpufleet._server import HostGuard, host_name, is_loopback


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:80", "[::1]"),
        ("LocalHost.", "localhost"),
        ("api.example.com:443", "api.example.com"),
        ("[::1]", "[::1]"),
    ],
)
def test_host_name(value: str, name: str) -> None:
    assert host_name(value) == name


def test_loopback_names() -> None:
    for name in ("localhost", "a.localhost", "127.0.0.1", "127.9.9.9", "[::1]", "::1"):
        assert is_loopback(name), name
    for name in ("0.0.0.0", "10.0.0.1", "127.0.0.1.nip.io", "[::ffff:127.0.0.1]", "evil.com"):
        assert not is_loopback(name), name


def test_bound_to_loopback_only_loopback_and_allowed_names() -> None:
    guard = HostGuard("127.0.0.1", ["api.example.com", "*.corp.net"])
    assert not guard.any_host
    for name in ("127.0.0.1", "localhost", "[::1]", "api.example.com", "gpu.corp.net"):
        assert guard.is_allowed(name), name
    for name in ("evil.com", "corp.net", "example.com", "0.0.0.0"):
        assert not guard.is_allowed(name), name


def test_bound_elsewhere_any_name_unless_listed() -> None:
    assert HostGuard("0.0.0.0").any_host
    assert HostGuard("10.0.0.5").is_allowed("whatever.example")
    listed = HostGuard("0.0.0.0", ["api.example.com"])
    assert listed.is_allowed("api.example.com")
    assert listed.is_allowed("127.0.0.1")  # local tools and probes
    assert not listed.is_allowed("evil.com")
    assert HostGuard("127.0.0.1", ["*"]).any_host


def test_origins() -> None:
    local = HostGuard("127.0.0.1")
    assert local.is_allowed_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert local.is_allowed_origin("http://localhost:3000", "127.0.0.1:8000")
    for origin in ("http://evil.com", "null", "file://", "chrome-extension://abc", ""):
        assert not local.is_allowed_origin(origin, "127.0.0.1:8000"), origin
    lan = HostGuard("0.0.0.0")
    assert lan.is_allowed_origin("http://10.0.0.5:8000", "10.0.0.5:8000")  # same origin
    assert not lan.is_allowed_origin("http://evil.com", "10.0.0.5:8000")
    assert not lan.is_allowed_origin("http://localhost:3000", "10.0.0.5:8000")
    app = HostGuard("0.0.0.0", ["app.example.com"])
    assert app.is_allowed_origin("https://app.example.com", "api.example.com")
