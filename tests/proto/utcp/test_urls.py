"""URL security for UTCP templates: wss:// anywhere, ws:// only to a parsed loopback host."""

from __future__ import annotations

import pytest
from utcp_websocket._security import is_secure_ws_url

from antiphon.errors import ConfigError, TemplateError
from antiphon.proto.utcp.urls import (
    check_token_url,
    check_ws_url,
    is_loopback_host,
    is_loopback_url,
)

ACCEPTED = [
    "wss://api.example.com/socket",
    "wss://10.0.0.5/ws",
    "wss://${HOST}/ws",
    "ws://localhost/socket",
    "ws://LOCALHOST:8080/ws",
    "ws://localhost./ws",
    "ws://127.0.0.1:9090/socket",
    "ws://127.255.0.7/ws",
    "ws://[::1]:9090/socket",
    "ws://[::ffff:127.0.0.1]/ws",
    "ws://0.0.0.0:8000/ws",
    "ws://[::]/ws",
    "ws://127.1/ws",
    "ws://2130706433/ws",
    "ws://0177.0.0.1/ws",
    "ws://0x7f000001/ws",
    "ws://localhost:${PORT}/ws",
    "ws://user:pw@localhost/ws",
]

REJECTED = [
    "ws://localhost.evil.com/ws",
    "ws://127.0.0.1.attacker.example/ws",
    "ws://10.0.0.5/ws",
    "ws://169.254.169.254/latest/meta-data",
    "ws://192.168.1.10/ws",
    "ws://remote.example.com/ws",
    "ws://10.1/ws",
    "ws://localhost@evil.com/ws",
    "http://localhost/ws",
    "https://api.example.com/ws",
    "",
    "not-a-url",
    "javascript:alert(1)",
    "ws:///path-only",
    "ftp://localhost/ws",
]


@pytest.mark.parametrize("url", ACCEPTED)
def test_accepted_urls_pass_unchanged(url: str) -> None:
    """wss:// to any host and ws:// to every loopback spelling pass and come back unchanged."""
    assert check_ws_url(url) == url


@pytest.mark.parametrize("url", REJECTED)
def test_rejected_urls_raise_a_template_error_quoting_the_url(url: str) -> None:
    """Lookalike hosts, private networks, http(s), empty and junk URLs are refused, quoting the URL."""
    with pytest.raises(TemplateError) as info:
        check_ws_url(url)
    assert str(info.value) == (
        "WebSocket URL must use wss://, or ws:// to a loopback host (localhost, 127.0.0.0/8, ::1); "
        f"got {url!r}"
    )
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("url", [*ACCEPTED, *REJECTED])
def test_verdicts_match_the_released_utcp_validator(url: str) -> None:
    """Every listed URL gets the same verdict from us as from utcp-websocket's is_secure_ws_url."""
    ours = True
    try:
        check_ws_url(url)
    except TemplateError:
        ours = False
    assert ours is is_secure_ws_url(url)


@pytest.mark.parametrize(
    "url",
    ["ws://evil.example\\@localhost/ws", "ws://local host/ws", "ws://localhost/ws\n", "wss://a.example/\x00"],
)
def test_parser_confusing_characters_are_refused(url: str) -> None:
    """Backslashes, whitespace and control characters are refused even where urllib would see loopback."""
    with pytest.raises(TemplateError, match="WebSocket URL must use wss://"):
        check_ws_url(url)


@pytest.mark.parametrize(
    "host",
    ["localhost", "localhost.", "LocalHost", "127.0.0.1", "127.1", "2130706433", "0177.0.0.1",
     "0x7f000001", "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0", "::", "127.42.42.42"],
)  # fmt: skip
def test_loopback_host_spellings(host: str) -> None:
    """Each resolver spelling of this machine counts as loopback."""
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["localhost.evil.com", "127.0.0.1.attacker.example", "10.1", "10.0.0.5", "example.com", "", ".", "0x", "::2"]
)
def test_lookalikes_and_other_networks_are_not_loopback(host: str) -> None:
    """Lookalike names, other networks and empty hosts are not loopback; no DNS is consulted."""
    assert not is_loopback_host(host)


def test_is_loopback_url_looks_at_the_host_of_any_scheme() -> None:
    """is_loopback_url parses the URL: http and wss loopback URLs count, prefixes do not."""
    assert is_loopback_url("http://127.0.0.1:8080/token")
    assert is_loopback_url("wss://[::1]/ws")
    assert not is_loopback_url("wss://localhost.evil.com/ws")
    assert not is_loopback_url("no host here")


@pytest.mark.parametrize("url", ["https://auth.example.com/token", "http://localhost:8080/token", "http://127.0.0.1/t"])
def test_token_url_accepts_https_and_loopback_http(url: str) -> None:
    """An OAuth2 token URL may be https anywhere or http on loopback."""
    assert check_token_url(url) == url


@pytest.mark.parametrize("url", ["http://169.254.169.254/token", "http://auth.example.com/token", "wss://a.example/t", ""])
def test_token_url_refuses_plain_http_to_other_hosts(url: str) -> None:
    """A client secret is never posted over plain http to a remote host, nor to a non-http URL."""
    with pytest.raises(TemplateError, match=r"^OAuth2 token URL must use https://, or http:// to a loopback host; got "):
        check_token_url(url)
