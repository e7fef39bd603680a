"""Autobahn TestSuite (kosoku) against the engine's echo app: a representative subset in seconds.

The full suite, with its report, is ``python -m benchmarks.autobahn`` (a few minutes).
"""

from __future__ import annotations

import pytest

from benchmarks.autobahn import NOT_OK, run_suite

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
SLOW = ("5.19", "5.20", "6.4.*")  # they wait one second per step by design; tests/engine/test_rfc.py covers 6.4's fail-fast


def kosoku_or_skip() -> None:
    try:
        import kosoku  # noqa: F401
    except (ImportError, OSError) as exc:
        pytest.skip(f"AUTOBAHN CONFORMANCE NOT TESTED: kosoku cannot be loaded ({exc}); pip install -e '.[test]'")


def test_autobahn_subset_has_no_failed_case_and_only_the_documented_non_strict_ones() -> None:
    """Sections 1-10 plus deflate cases: every case OK, except those NOT_OK lists, with exactly the verdict it gives."""
    kosoku_or_skip()
    suite = run_suite(SUBSET, SLOW, compression="deflate", parallelism=2, timeout_s=120)
    assert not suite.timed_out
    assert len(suite.results) > 230, "the subset lost cases: did kosoku rename them?"
    assert [suite.describe(r) for r in suite.failed] == []
    unexpected = {
        r.case_id: suite.verdict(r)
        for r in suite.results
        if suite.verdict(r) != NOT_OK.get(r.case_id, ("OK", ""))[0]
    }
    assert unexpected == {}


def test_autobahn_deflate_cases_are_unimplemented_when_compression_is_off() -> None:
    """Without ServerConfig.compression the engine never negotiates deflate: 12.x and 13.x are UNIMPLEMENTED, not FAILED."""
    kosoku_or_skip()
    suite = run_suite(("1.1.1", "12.1.1", "13.1.1"), compression=None, timeout_s=60)
    assert {r.case_id: suite.verdict(r) for r in suite.results} == {
        "1.1.1": "OK",
        "12.1.1": "UNIMPLEMENTED",
        "13.1.1": "UNIMPLEMENTED",
    }
