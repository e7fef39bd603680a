"""Autobahn TestSuite (kosoku) against the engine's echo app: a representative subset in seconds.

The full suite, with its report, is ``python -m benchmarks.autobahn`` (a few minutes).
"""

from __future__ import annotations

import pytest

from benchmarks.autobahn import NOT_OK, SuiteResult, run_client_suite, run_suite

# Autobahn's 12.x case files read their test data with open(...).read() and never close it.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <_io\.\w+ name='[^']*kosoku/shim/autobahntestsuite/testdata/"
    r":pytest.PytestUnraisableExceptionWarning"
)

SUBSET = (
    "1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*",  # framing, pings, reserved bits, opcodes, fragments, UTF-8, closing
    "9.1.1", "9.2.1",  # a 64 KiB text and binary message
    "10.*",  # auto-fragmentation
    "12.1.1", "12.2.1", "13.1.1", "13.3.1", "13.5.1", "13.7.1",  # permessage-deflate, several offers
)  # fmt: skip
CLIENT_SUBSET = ("1.*", "2.*", "3.*", "4.*", "5.*", "7.*", "9.1.1", "10.*", "12.1.1", "13.1.1", "13.3.1")
SLOW = ("5.19", "5.20", "6.4.*")  # they wait one second per step by design; tests/engine/test_rfc.py covers 6.4's fail-fast


def kosoku_or_skip() -> None:
    try:
        import kosoku  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"AUTOBAHN CONFORMANCE NOT TESTED: kosoku cannot be loaded ({exc}); pip install -e '.[test]'")


def test_autobahn_subset_has_no_failed_case_and_only_the_documented_non_strict_ones() -> None:
    """Sections 1-10 plus deflate cases: every case OK, except those NOT_OK lists, which get at worst the verdict given there."""
    kosoku_or_skip()
    suite = run_suite(SUBSET, SLOW, compression="deflate", parallelism=2, timeout_s=120)
    assert not suite.timed_out
    assert len(suite.results) > 230, "the subset lost cases: did kosoku rename them?"
    assert_as_documented(suite)


def assert_as_documented(suite: SuiteResult) -> None:
    """No case FAILED, and every case is OK or gets the verdict NOT_OK documents for it.

    A documented case may also pass as OK: the NON-STRICT ones depend on whether the
    violation shares a read with the message before it.
    """
    assert [suite.describe(r) for r in suite.failed] == []
    unexpected = {
        r.case_id: suite.verdict(r)
        for r in suite.results
        if suite.verdict(r) not in ("OK", NOT_OK.get(r.case_id, ("OK", ""))[0])
    }
    assert unexpected == {}


def test_autobahn_client_subset_has_no_failed_case() -> None:
    """The engine's client (connect_websocket + an echo session) against kosoku's fuzzing server: the same verdicts as the server."""
    kosoku_or_skip()
    # A few cases take a second each (which varies): after the client fails the connection, both ends
    # wait for the other to drop TCP (RFC 6455 7.1.1 has the client wait) until kosoku gives up.
    suite = run_client_suite(CLIENT_SUBSET, SLOW, compression="deflate", timeout_s=120)
    assert not suite.timed_out
    assert len(suite.results) > 100, "the subset lost cases: did kosoku rename them?"
    assert_as_documented(suite)


def test_autobahn_deflate_cases_are_unimplemented_when_compression_is_off() -> None:
    """Without ServerConfig.compression the engine never negotiates deflate: 12.x and 13.x are UNIMPLEMENTED, not FAILED."""
    kosoku_or_skip()
    suite = run_suite(("1.1.1", "12.1.1", "13.1.1"), compression=None, timeout_s=60)
    assert {r.case_id: suite.verdict(r) for r in suite.results} == {
        "1.1.1": "OK",
        "12.1.1": "UNIMPLEMENTED",
        "13.1.1": "UNIMPLEMENTED",
    }
