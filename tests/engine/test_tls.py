"""wss:// for every face over real sockets: `websockets` and antiphon's own clients, a test CA, failures contained."""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from websockets.trio.client import connect

from antiphon.chat import open_chat
from antiphon.engine.server import ServerConfig
from antiphon.engine.tls import server_context
from antiphon.errors import ConfigError, HandshakeError, TemplateError
from antiphon.media import (
    TextFrame,
    WebsocketClientParams,
    WebsocketClientTransport,
    WebsocketServerParams,
    WebsocketServerTransport,
)
from antiphon.proto.utcp.templates import WebSocketCallTemplate
from antiphon.tools import ToolServer, open_tool_client
from tests.chat.conftest import SECRET, tcp_gateway
from tests.tools.conftest import demo_app


@asynccontextmanager
async def tls_tools(server_ssl: ssl.SSLContext, **config: Any) -> AsyncIterator[ToolServer]:
    """The demo tool app served over wss:// on 127.0.0.1, port 0."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ToolServer(demo_app(), ServerConfig(port=0, ssl=server_ssl, **config)).run)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def tls_media(server_ssl: ssl.SSLContext) -> AsyncIterator[WebsocketServerTransport]:
    """A media server transport over wss:// on 127.0.0.1, port 0."""
    transport = WebsocketServerTransport(WebsocketServerParams(ssl_context=server_ssl), host="127.0.0.1", port=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        yield transport
        await transport.shutdown(0)


class _TestNames(trio.abc.HostnameResolver):
    """Resolves ``antiphon.test`` to 127.0.0.1, as a DNS entry for another machine would; nothing else."""

    async def getaddrinfo(
        self, host: bytes | None, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
    ) -> Any:
        if host != b"antiphon.test":
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return socket.getaddrinfo("127.0.0.1", port, socket.AF_INET, type, proto, flags)

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        raise NotImplementedError


# --------------------------------------------------------------------------- websockets, the reference client


async def test_websockets_client_chats_over_wss(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    """The chat gateway over wss://: `websockets` with a CA-pinned context authenticates and gets a reply."""
    async with tcp_gateway(server=ServerConfig(port=0, ssl=server_ssl)) as gateway:
        assert gateway.url.startswith("wss://127.0.0.1:")
        async with connect(gateway.url, ssl=client_ssl, open_timeout=10) as ws:
            await ws.send(json.dumps({"secret": SECRET}))
            assert json.loads(await ws.recv())["type"] == "connected"
            await ws.send(json.dumps({"type": "message", "id": "m1", "payload": {"message": "hi"}}))
            event: dict[str, Any] = {}
            while event.get("type") != "stream_end":
                event = json.loads(await ws.recv())
            assert "You said: 'hi'" in event["full_response"]


async def test_websockets_client_calls_a_tool_over_wss(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    """The tool server over wss://: `websockets` calls `add` and reads the manual, whose templates say wss://."""
    async with tls_tools(server_ssl) as server:
        async with connect(f"{server.url}/tools/add", ssl=client_ssl, open_timeout=10) as ws:
            await ws.send(json.dumps({"a": 40}))
            assert json.loads(await ws.recv()) == 42
        host = f"localhost:{server.port}"
        async with connect(f"wss://{host}/utcp", ssl=client_ssl, open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "utcp"}))
            manual = json.loads(await ws.recv())
        urls = {t["tool_call_template"]["url"] for t in manual["tools"]}
        assert f"wss://{host}/tools/add" in urls


async def test_websockets_client_streams_media_over_wss(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    """The media server transport over wss://: a protobuf text frame from `websockets` arrives on input()."""
    from tests.media import pb_schema as pb

    async with tls_media(server_ssl) as transport:
        assert transport.url.startswith("wss://")
        async with connect(transport.url, ssl=client_ssl, open_timeout=10) as ws:
            await ws.send(pb.text("over tls"))
            with trio.fail_after(10):
                frame = await transport.input().receive()
                assert isinstance(frame, TextFrame) and frame.text == "over tls"


# --------------------------------------------------------------------------- antiphon's own clients


async def test_open_chat_over_wss(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    """open_chat(ssl_context=...) talks to a wss:// gateway; without the CA the handshake fails verification."""
    async with tcp_gateway(server=ServerConfig(port=0, ssl=server_ssl)) as gateway:
        async with open_chat(gateway.url, secret=SECRET, ssl_context=client_ssl) as chat:
            reply = await chat.ask("over tls")
            assert reply.status == "completed" and "over tls" in reply.text
        with pytest.raises(
            HandshakeError, match="TLS certificate verify failed: unable to get local issuer certificate"
        ):
            async with open_chat(gateway.url, secret=SECRET):  # the system's CAs do not know the test CA
                pass


async def test_media_client_transport_over_wss(server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext) -> None:
    """antiphon's media client transport dials a wss:// media server with the caller's context."""
    async with tls_media(server_ssl) as server:
        client = WebsocketClientTransport(server.url, WebsocketClientParams(ssl_context=client_ssl))
        async with client:
            with trio.fail_after(10):
                await client.connect()
                assert await client.send(TextFrame("hello over tls"))
                frame = await server.input().receive()
                assert isinstance(frame, TextFrame) and frame.text == "hello over tls"


async def test_tool_calls_between_antiphons_over_wss_to_a_named_host(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    """Tool client to tool server at wss://antiphon.test (not loopback by name): call, discover, call by name.

    The same host over ws:// is refused before anything is dialled: plain text only to loopback.
    """
    trio.socket.set_custom_hostname_resolver(_TestNames())
    async with tls_tools(server_ssl) as server, open_tool_client(ssl_context=client_ssl) as tools:
        base = f"wss://antiphon.test:{server.port}"
        add = WebSocketCallTemplate(name="add", url=f"{base}/tools/add", response_format="json")
        assert await tools.call(add, {"a": 1, "b": 2}) == 3
        manual = await tools.register_manual(WebSocketCallTemplate(name="remote", url=f"{base}/utcp"))
        assert {t.tool_call_template.url for t in manual.tools} >= {f"{base}/tools/add"}
        assert await tools.call("remote.echo", {"text": "ab", "n": 2}) == {"echo": "abab"}
        with pytest.raises(TemplateError, match="wss://"):
            await tools.call(
                WebSocketCallTemplate(name="add", url=f"ws://antiphon.test:{server.port}/tools/add"), {"a": 1}
            )


# --------------------------------------------------------------------------- failures stay on their connection


async def test_a_plain_client_or_a_silent_one_costs_only_its_connection(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    """Plain HTTP on a TLS port fails its TLS handshake; a silent peer goes at handshake_timeout; others carry on."""
    async with tls_tools(server_ssl, handshake_timeout_s=0.2) as server:
        with trio.fail_after(10):
            async with await trio.open_tcp_stream("127.0.0.1", server.port) as plain:
                await plain.send_all(b"GET /tools/add HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
                assert b"HTTP/1.1" not in await _read_to_eof(plain)
        silent = await trio.open_tcp_stream("127.0.0.1", server.port)
        with trio.fail_after(10):
            async with silent:
                while await silent.receive_some():  # the server hangs up after 0.2 s of nothing
                    pass
        async with connect(f"{server.url}/tools/add", ssl=client_ssl, open_timeout=10) as ws:
            await ws.send(json.dumps({"a": 1}))
            assert json.loads(await ws.recv()) == 3
        assert server.counters.handshakes == {"tls": 1, "timeout": 1, "accepted": 1}


async def _read_to_eof(stream: trio.SocketStream) -> bytes:
    out = b""
    try:
        while chunk := await stream.receive_some():
            out += chunk
    except trio.BrokenResourceError:  # a reset
        pass
    return out


# --------------------------------------------------------------------------- certificate files


def test_server_context_loads_pem_files(pem_files: tuple[Path, Path]) -> None:
    """A certificate chain and its key as PEM files make a server-side context; the key may be in the cert file."""
    cert, key = pem_files
    assert isinstance(server_context(cert, key), ssl.SSLContext)
    both = cert.parent / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert isinstance(server_context(both), ssl.SSLContext)


def test_bad_certificate_files_are_one_located_line(
    tmp_path: Path, pem_files: tuple[Path, Path], ca: trustme.CA
) -> None:
    """Missing, unreadable, not PEM, keyless, encrypted or mismatched: a ConfigError naming the file and the problem."""
    cert, key = pem_files
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    other_key = tmp_path / "other.pem"
    ca.issue_cert("elsewhere.test").private_key_pem.write_to_path(other_key)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    cases = [
        (
            (tmp_path / "missing.pem", key),
            rf"certfile: cannot read '{tmp_path}/missing.pem' \(No such file or directory\)",
        ),
        ((junk, key), "certfile: .*junk.pem' holds no PEM certificate"),
        ((cert, None), "certfile: .*cert.pem' holds no PEM private key; give keyfile"),
        ((cert, junk), "keyfile: .*junk.pem' holds no PEM private key$"),
        ((cert, encrypted), "keyfile: .*encrypted.pem' is encrypted; give an unencrypted key"),
        ((cert, other_key), "keyfile: the key in .*other.pem' does not match the certificate in .*cert.pem'"),
    ]
    for (certfile, keyfile), message in cases:
        with pytest.raises(ConfigError, match=message):
            server_context(certfile, keyfile)


async def test_the_cli_trusts_a_private_ca_through_ssl_cert_file(
    tmp_path: Path, server_ssl: ssl.SSLContext, ca: trustme.CA
) -> None:
    """`antiphon tools call wss://...` verifies with SSL_CERT_FILE (as the README says); without it, one clear line."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(ca_file)
    async with tls_tools(server_ssl) as server:
        argv = [sys.executable, "-m", "antiphon", "tools", "call", f"wss://localhost:{server.port}", "add", "--arg", "a=5"]
        env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
        trusted = await trio.run_process(argv, env={**env, "SSL_CERT_FILE": str(ca_file)}, capture_stdout=True)
        assert trusted.stdout.decode().strip() == "7"
        untrusted = await trio.run_process(argv, env=env, capture_stderr=True, check=False)
        assert untrusted.returncode == 2
        assert "TLS certificate verify failed" in untrusted.stderr.decode()
