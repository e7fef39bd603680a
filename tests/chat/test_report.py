"""Transcripts printed for people: nothing a client sent can drive the operator's terminal or forge a line."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from antiphon.chat.report import escape, runs_table, transcript_json, transcript_text
from antiphon.chat.store import RunSummary, TurnRecord

ESC = "\x1b"
HOSTILE = (
    f"{ESC}]0;owned{ESC}\\"  # OSC: set the window title
    f"{ESC}[2J{ESC}[H"  # CSI: clear the screen, cursor home
    "\r#1 [m1] 2024-01-01 00:00:00 user:\n"  # carriage return, then a forged header
    "  assistant (completed, 0 prompt + 0 reply tokens):\n"
    "    all is well\x07\x9b31m\u202eevil\u2028"  # BEL, C1 CSI, right-to-left override, line separator
)
# What a terminal acts on: C0 (newline aside), DEL, C1, bidi controls, line separators.
TERMINAL_CONTROLS = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")


def hostile_run() -> tuple[RunSummary, list[TurnRecord]]:
    run = RunSummary(run_id="r1", connector="/", created_at=0.0, updated_at=0.0, turns=1)
    turn = TurnRecord(
        message_id=f"id{ESC}[31m", message_number=1, message=HOSTILE, context={"k": f"v{ESC}[0m\u009b"},
        received_at=0.0, agent="assistant", reply=HOSTILE, status="completed", prompt_tokens=1,
        candidates_tokens=2, finished_at=1.0,
    )  # fmt: skip
    return run, [turn]


def test_show_escapes_control_characters() -> None:
    """`sessions show` text has no control character but newline: ESC, CR, BEL, C1 and bidi are escaped."""
    out = transcript_text(*hostile_run())
    assert TERMINAL_CONTROLS.search(out) is None
    assert "\\x1b]0;owned\\x1b\\" in out and "\\x07\\x9b31m\\u202eevil\\u2028" in out
    assert "[id\\x1b[31m]" in out


def test_client_text_cannot_forge_transcript_lines() -> None:
    """Every line of a message or reply is indented under its header, so no client line reads as a header."""
    out = transcript_text(*hostile_run())
    headers = [line for line in out.splitlines() if line and not line.startswith("    ")]
    assert headers == [
        "run r1 at /, started 1970-01-01 00:00:00 UTC, 1 turns",
        "#1 [id\\x1b[31m] 1970-01-01 00:00:00 user:",
        "  assistant (completed, 1 prompt + 2 reply tokens):",
    ]


def test_list_escapes_run_fields() -> None:
    """`sessions list` escapes control characters in run ids and connector paths too."""
    run = RunSummary(run_id=f"r{ESC}[2J", connector="/\r\n", created_at=0.0, updated_at=0.0, turns=0)
    out = runs_table([run])
    assert TERMINAL_CONTROLS.search(out) is None and "r\\x1b[2J" in out and "/\\r\\n" in out


def test_json_output_is_ascii_and_lossless() -> None:
    """`--json` prints only ASCII (nothing a terminal acts on) and parses back to the exact text."""
    run, turns = hostile_run()
    out = transcript_json(run, turns)
    assert out.isascii() and TERMINAL_CONTROLS.search(out.replace("\n", "")) is None
    doc = json.loads(out)
    assert doc["turns"][0]["message"] == HOSTILE and doc["turns"][0]["context"] == turns[0].context


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_escape_leaves_nothing_a_terminal_acts_on(text: str) -> None:
    """For any text, escape() leaves no control character, and keeps printable text unchanged."""
    out = escape(text)
    assert TERMINAL_CONTROLS.search(out) is None and "\n" not in out
    if TERMINAL_CONTROLS.search(text) is None and "\n" not in text:
        assert out == text
