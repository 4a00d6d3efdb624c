"""The pod's entry point: torchrun that keeps the trainer's exit code.

torchrun exits 1 whenever a worker fails, whatever code the worker used, so the Job's
podFailurePolicy could never see the trainer's permanent exit codes (3 bad spec, 4 bad
data) and would retry a job that cannot succeed. This wrapper runs torchrun in-process
(same arguments, same PET_* environment variables) and exits with the workers' code.

    python -m finetune_trainer.launch --nnodes=2 --nproc-per-node=8 ... -m finetune_trainer run ...
"""

from __future__ import annotations

import signal
import sys

from finetune_api.contract import EXIT_RETRYABLE, PERMANENT_EXIT_CODES, RETRYABLE_EXIT_CODES
from finetune_trainer.errors import classify, write_termination_message


def exit_code_for(worker_codes: list[int]) -> int:
    """The pod's exit code for the workers' codes: permanent first, then retryable, then signals, then the first.

    A retryable code beats a signal: when one worker exits 75, torchrun stops the others with SIGTERM.
    """
    failed = [c for c in worker_codes if c != 0]
    if not failed:
        return 0
    for code in failed:
        if code in PERMANENT_EXIT_CODES:
            return code
    for code in failed:
        if code in RETRYABLE_EXIT_CODES:
            return code
    for code in failed:
        if code < 0:  # killed by a signal, reported as -signum
            return 128 - code
    return failed[0]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as err:
        return exit_code_for([failure.exitcode for failure in err.failures.values()])
    except SignalException as err:
        # The pod is being stopped (preemption, eviction, a drained node): torchrun stopped the workers.
        return _retryable(
            f"the trainer was stopped by {signal.Signals(err.sigval).name} (preempted or evicted); "
            "the Job runs it again from the last checkpoint"
        )
    except Exception as err:
        # The launcher's own failures: a rendezvous that timed out, a store on pod 0 that went away.
        failure = classify(err)
        if not failure.retryable:
            raise
        return _retryable(failure.reason)
    return 0


def _retryable(reason: str) -> int:
    print(f"retryable error: {reason}", file=sys.stderr)
    write_termination_message(f"retryable error: {reason}")
    return EXIT_RETRYABLE


if __name__ == "__main__":
    raise SystemExit(main())
