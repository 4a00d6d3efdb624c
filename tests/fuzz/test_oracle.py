"""The fuzz oracle itself: it passes the outcomes the contract allows and flags each way of breaking it."""

from __future__ import annotations

from tests.fuzz.oracle import Expect, Outcome, classify, judge, judge_api

GOOD_REFUSAL = (
    "some log line\ndata error: dataset.files.train (train.jsonl) row 3, column 'label': label 'meh' is not in "
    "task.labels; allowed: neg, pos. Add it to task.labels or fix the data\n"
)
MUST_REFUSE = Expect(False, ("'meh'",), (4,), "unknown label")


def test_a_clean_refusal_passes() -> None:
    assert judge(Outcome(4, GOOD_REFUSAL), MUST_REFUSE) == []
    assert classify(Outcome(4, GOOD_REFUSAL)) == "refused-data"


def test_an_accepted_valid_case_passes_and_an_accepted_invalid_one_fails() -> None:
    assert judge(Outcome(0, ""), Expect(True)) == []
    assert judge(Outcome(0, ""), Expect(None)) == []
    assert judge(Outcome(0, ""), MUST_REFUSE) == ["accepted, but the case must be refused: unknown label"]


def test_a_traceback_fails_whatever_the_exit_code() -> None:
    stderr = 'Traceback (most recent call last):\n  File "x.py"\nValueError: boom\n'
    assert classify(Outcome(4, stderr)) == "traceback"
    assert judge(Outcome(4, stderr), Expect(None)) == ["traceback instead of a message: ValueError: boom"]


def test_exit_1_and_the_retryable_code_fail_for_a_users_mistake() -> None:
    for code in (1, 75, 139, -11):
        [problem] = judge(Outcome(code, "error: something\n"), MUST_REFUSE)
        assert problem.startswith(f"exit code {code} for a user's input")


def test_a_permanent_code_without_the_cli_message_is_not_a_clean_refusal() -> None:
    assert classify(Outcome(3, "Killed\n")) == "exit-3"


def test_refusing_a_valid_case_fails() -> None:
    [problem] = judge(Outcome(4, GOOD_REFUSAL), Expect(True, why="valid rows"))
    assert problem.startswith("refused a valid case (valid rows): data error:")


def test_a_refusal_must_name_the_field_the_value_and_the_fix() -> None:
    vague = "config error: something is wrong\n"
    problems = judge(Outcome(3, vague), Expect(False, ("spec.training.epochs", "-1"), (3,)))
    assert [p.split(":")[0] for p in problems] == [
        "message names no field or column",
        "message does not mention 'spec.training.epochs'",
        "message does not mention '-1'",
        "message says nothing about the fix",
    ]


def test_the_wrong_permanent_code_fails() -> None:
    [problem] = judge(Outcome(3, GOOD_REFUSAL.replace("data error", "config error")), MUST_REFUSE)
    assert problem.startswith("exit code 3, expected one of (4,)")


def test_a_refused_run_must_leave_the_output_directory_as_it_was() -> None:
    outcome = Outcome(4, GOOD_REFUSAL, files_before=frozenset({"a"}), files_after=frozenset({"a", "checkpoint-1/x"}))
    assert judge(outcome, MUST_REFUSE) == ["refused, but left files in the output directory: checkpoint-1/x"]


def test_the_api_server_and_our_validation_must_agree() -> None:
    ours = ["spec.training.epochs: should be greater than 0 (got -1)"]
    server = 'The FineTuneJob "x" is invalid: spec.training.epochs: Invalid value: -1: should be greater than 0'
    assert judge_api(True, server, ours) == []
    assert judge_api(False, "", None) == []
    assert judge_api(False, "", ours)[0].startswith("the API server accepted a spec our validation refuses")
    assert judge_api(True, server, None)[0].startswith("the API server refused a spec our validation accepts")
    assert judge_api(True, "spec.model: Required value", ours)[0].startswith("the API server's refusal names none")
