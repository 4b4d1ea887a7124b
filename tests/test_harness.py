"""The distributed tests' result protocol (tests/dist/common.py): a rank that fails shows its own error."""
import json

import pytest

from conftest import dist_result, run_ranks
from dist.common import FAIL_RANK_ENV, RANK_ERROR, RESULT, parse_result, rank_errors


def test_parse_result_takes_the_last_result_line():
    out = "\n".join(["noise", RESULT + json.dumps({"world_size": 2, "x": 1}),
                     RESULT + json.dumps({"world_size": 2, "x": 2}), "bye"])
    assert parse_result(out) == {"world_size": 2, "x": 2}


def test_parse_result_without_result_names_the_exit_status_and_shows_stderr():
    with pytest.raises(AssertionError, match=r"no RESULT line \(exit status -9\)(.|\n)*Killed by signal 9"):
        parse_result("started\n", "Killed by signal 9\n", -9)


def test_parse_result_puts_each_failed_ranks_traceback_first():
    tb = 'Traceback (most recent call last):\n  File "x.py", line 3, in main\nValueError: bad shard\n'
    error = {"rank": 1, "world_size": 2, "error": "ValueError: bad shard", "traceback": tb}
    out = RESULT + json.dumps({"world_size": 2}) + "\n" + RANK_ERROR + json.dumps(error) + "\n"
    with pytest.raises(AssertionError) as e:
        parse_result(out, "launcher summary", 1)
    assert str(e.value).splitlines() == ["rank 1 failed: ValueError: bad shard",
                                         "[rank 1] Traceback (most recent call last):",
                                         '[rank 1]   File "x.py", line 3, in main',
                                         "[rank 1] ValueError: bad shard"]


@pytest.mark.distributed
def test_failing_rank_shows_its_own_error(monkeypatch):
    monkeypatch.setenv(FAIL_RANK_ENV, "1")        # rank 1 of the script raises at start
    p = run_ranks(2, ["tests/dist/adapter_check.py", "--stage", "2"], timeout=300, check=False)
    assert p.returncode != 0
    errors = rank_errors(p.stdout)
    assert [(e["rank"], e["world_size"]) for e in errors] == [(1, 2)], p.stdout[-3000:]
    expected = "RuntimeError: injected failure on rank 1"
    for failure in (lambda: dist_result(p),
                    lambda: run_ranks(2, ["tests/dist/adapter_check.py", "--stage", "2"], timeout=300)):
        with pytest.raises(AssertionError) as e:
            failure()
        message = str(e.value)
        assert f"rank 1 failed: {expected}" in message, message
        assert "[rank 1] Traceback (most recent call last):" in message, message
        assert f"[rank 1] {expected}" in message, message
