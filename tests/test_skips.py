"""The suite's own rules (tests/conftest.py). Every skip is declared with a mark at the test and has a
documented reason, and with ``HF_PEFT_SUITE_REQUIRE_ALL=1`` (set by ``.ci/run``) any other skip fails the suite.

The rule is checked by running small test files in an inner pytest session (pytest's own ``pytester``) with the
suite's hooks. The last test checks that the session's background lane foresees every command its fixtures wait for.
"""

from __future__ import annotations

import re

import pytest

from .conftest import REPO_ROOT, REQUIRE_ALL, SKIPS

HOLDING = next(skip.reason for skip in SKIPS.values() if skip.holds)  # e.g. the AdapterHub cell in one environment
NOT_HOLDING = next(skip.reason for skip in SKIPS.values() if not skip.holds)
INNER_TESTS = f"""
import pytest

@pytest.mark.skipif(True, reason={HOLDING!r})
def test_documented_and_true_here():
    pass

@pytest.mark.skipif(True, reason={NOT_HOLDING!r})
def test_documented_but_not_true_here():
    pass

@pytest.mark.skipif(True, reason="a reason nobody documented")
def test_undocumented():
    pass

def test_runs():
    pass
"""


@pytest.fixture
def inner(pytester, monkeypatch):
    """A pytest session in a temporary folder whose conftest uses this suite's skip hooks."""
    pytester.makeconftest("from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport\n")
    monkeypatch.delenv(REQUIRE_ALL, raising=False)
    return pytester


def test_every_skip_is_declared_with_a_mark_not_raised_from_a_test_or_a_helper():
    raised = [f"{path.name}:{number}" for path in sorted((REPO_ROOT / "tests").glob("*.py"))
              if path.name != "test_skips.py"  # (this file's inner tests below)
              for number, line in enumerate(path.read_text().splitlines(), start=1)
              if re.search(r"pytest\.(skip|importorskip|xfail)\(", line)]
    assert raised == []


def test_without_the_variable_skips_are_reported_as_skips(inner):
    inner.makepyfile(INNER_TESTS)
    inner.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, skipped=3)


def test_with_the_variable_only_a_documented_skip_whose_condition_holds_stays_a_skip(inner, monkeypatch):
    inner.makepyfile(INNER_TESTS)
    monkeypatch.setenv(REQUIRE_ALL, "1")
    result = inner.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1, errors=2)  # a mark skips in the test's setup: an error there
    assert result.ret != 0
    result.stdout.fnmatch_lines([
        f"*{REQUIRE_ALL}=1 and this skipped: its documented condition does not hold in this environment*",
        f"*{REQUIRE_ALL}=1 and this skipped: the reason is not one of the documented ones*a reason nobody documented*",
    ], consecutive=False)


def test_with_the_variable_a_module_that_skips_as_it_is_collected_fails(inner, monkeypatch):
    inner.makepyfile('import pytest\npytest.skip("no reason given", allow_module_level=True)\n')
    monkeypatch.setenv(REQUIRE_ALL, "1")
    result = inner.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert result.ret != 0


# ------------------------------------------------------------------------------------ the session's background lane
def test_every_fixture_that_waits_for_the_background_lane_schedules_what_it_waits_for(tmp_path):
    """The lane runs a command from the session's start only if a collected test's fixtures foresee it; one asked for
    without being foreseen is an error (``two_process_evaluations`` once ran its two launches late, on demand, 16 s
    with one core idle). Every ``background.launched(name)`` in conftest.py must be foreseen from its fixture."""
    import ast
    import inspect

    from . import conftest

    asked = {name: {name} for name in conftest.LAUNCHED_FIXTURES}
    for function in ast.parse(inspect.getsource(conftest)).body:  # the fixtures of their own
        if isinstance(function, ast.FunctionDef) and function.name != "launched_fixture":
            names = {call.args[0].value for call in ast.walk(function) if isinstance(call, ast.Call)
                     and getattr(call.func, "attr", None) == "launched" and isinstance(call.args[0], ast.Constant)}
            if names:
                asked[function.name] = names
    assert sorted(set().union(*asked.values())) == sorted(conftest.BACKGROUND)
    assert sorted(conftest.background_commands(tmp_path)) == sorted(conftest.BACKGROUND)
    assert {fixture: set(conftest.commands_needed([fixture])) for fixture in asked} == asked
