"""`antiphon tools serve` / `antiphon tools call`: argument mapping, app loading, and a real call."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from antiphon.cli import _parser, main
from antiphon.errors import ConfigError
from antiphon.tools import ApiKeyAuth, ToolApp
from antiphon.tools.cli import (
    SECRET_ENV,
    auth_from_args,
    build_app,
    call_template,
    parse_args,
)
from tests.tools.conftest import API_KEY, demo_app, tcp_tools

APP = demo_app()


def shout(text: str) -> str:
    """Upper-case the text."""
    return text.upper()


def test_arg_values_follow_the_tools_schema_when_it_says_string() -> None:
    """With inputs saying string, text=123 stays "123" and null stays "null"; typed params still parse."""
    inputs = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "n": {"type": "integer"},
            "maybe": {"type": ["string", "null"]},
            "either": {"anyOf": [{"type": "string"}, {"type": "array"}]},
        },
    }
    pairs = ["text=123", "n=4", "maybe=null", "either=[1]", "other=5", "quoted=\"7\""]
    assert parse_args(pairs, inputs) == {"text": "123", "n": 4, "maybe": None, "either": [1], "other": 5, "quoted": "7"}
    assert parse_args(["text=true", "text2=1.5"], {"properties": {"text": {"type": "string"}, "text2": {"type": "string"}}}) == {
        "text": "true", "text2": "1.5"
    }  # fmt: skip


def test_one_secret_variable_for_the_manual_and_both_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """$ANTIPHON_TOOLS_SECRET is what the manual names and what tools serve and tools call read."""
    monkeypatch.setenv("ANTIPHON_TOOLS_SECRET", "s3")
    assert ToolApp().secret_variable == SECRET_ENV == "ANTIPHON_TOOLS_SECRET"
    for argv in (["tools", "serve", "m:app"], ["tools", "call", "ws://127.0.0.1:1", "t"]):
        assert auth_from_args(_parser().parse_args(argv)) == ApiKeyAuth(api_key="s3")
    manual = ToolApp(auth=ApiKeyAuth(api_key="k")).manual("ws://127.0.0.1:1")
    assert all(t.tool_call_template.auth == ApiKeyAuth(api_key="${ANTIPHON_TOOLS_SECRET}") for t in manual.tools)


def test_arg_values_are_json_when_they_parse_else_strings() -> None:
    """n=3 is a number, tags=[..] a list, text=hello a string, '"3"' the string 3; a missing '=' is an error."""
    assert parse_args(["n=3", 'tags=["a"]', "text=hello", 's="3"', "eq=a=b", "e="]) == {
        "n": 3, "tags": ["a"], "text": "hello", "s": "3", "eq": "a=b", "e": ""
    }  # fmt: skip
    with pytest.raises(ConfigError, match="K=V"):
        parse_args(["novalue"])


def test_url_and_tool_map_to_a_tools_path_template(monkeypatch: pytest.MonkeyPatch) -> None:
    """URL + TOOL -> URL/tools/TOOL, json replies, no pooling, key from the environment by default."""
    monkeypatch.setenv("ANTIPHON_TOOLS_SECRET", "env-key")
    args = _parser().parse_args(["tools", "call", "ws://127.0.0.1:8765/", "add", "--protocol", "utcp-v1", "--header", "X-A: 1"])
    template = call_template(args)
    assert template.url == "ws://127.0.0.1:8765/tools/add" and template.name == "add"
    assert template.response_format == "json" and template.keep_alive is False
    assert template.protocol == "utcp-v1" and template.headers == {"X-A": "1"}
    assert template.auth == ApiKeyAuth(api_key="env-key")


def test_serve_loads_an_app_a_function_or_a_list() -> None:
    """MODULE:OBJECT may name a ToolApp (flags override its settings), one function, or a list of them."""
    app = build_app("tests.tools.test_cli:APP", auth=ApiKeyAuth(api_key="k"))
    assert isinstance(app, ToolApp) and app.auth == ApiKeyAuth(api_key="k") and "add" in app.tools
    assert list(build_app("tests.tools.test_cli:shout").tools) == ["shout"]
    args = _parser().parse_args(["tools", "serve", "tests.tools.test_cli:shout", "--call-timeout", "5"])
    assert args.call_timeout == 5 and build_app(args.target, call_timeout_s=args.call_timeout).call_timeout_s == 5
    with pytest.raises(ConfigError, match="MODULE:OBJECT"):
        build_app("tests.tools.test_cli")
    with pytest.raises(ConfigError, match="cannot import"):
        build_app("tests.tools.test_cli:missing")


async def test_tools_call_prints_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    """`antiphon tools call URL add --arg a=2 --arg b=5 --api-key K` prints 7 and exits 0."""
    async with tcp_tools(demo_app(auth=ApiKeyAuth(api_key=API_KEY))) as server:
        argv = ["tools", "call", server.url, "add", "--arg", "a=2", "--arg", "b=5", "--api-key", API_KEY]
        code = await trio.to_thread.run_sync(_exit_code, argv)
        assert code == 0 and capsys.readouterr().out == "7\n"
        for stream in ([], ["--stream"]):  # a streaming tool streams, with or without --stream
            argv = ["tools", "call", server.url, "count", "--arg", "n=2", "--api-key", API_KEY, *stream]
            assert await trio.to_thread.run_sync(_exit_code, argv) == 0
            assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"i": 0}, {"i": 1}]
        argv = ["tools", "call", server.url, "echo", "--arg", "text=123", "--arg", "n=2", "--api-key", API_KEY]
        assert await trio.to_thread.run_sync(_exit_code, argv) == 0
        assert capsys.readouterr().out == '{"echo": "123123"}\n'  # text stayed a string: the schema says str
        argv = ["tools", "call", server.url, "add", "--api-key", API_KEY]
        assert await trio.to_thread.run_sync(_exit_code, argv) == 2
        assert "missing required argument: 'a'" in capsys.readouterr().err


def _exit_code(argv: list[str]) -> Any:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code
