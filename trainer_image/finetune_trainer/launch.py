"""The pod's entry point: torchrun that keeps the trainer's exit code.

torchrun exits 1 whenever a worker fails, whatever code the worker used, so the Job's
podFailurePolicy could never see the trainer's permanent exit codes (3 bad spec, 4 bad
data) and would retry a job that cannot succeed. This wrapper runs torchrun in-process
(same arguments, same PET_* environment variables) and exits with the workers' code.

    python -m finetune_trainer.launch --nnodes=2 --nproc-per-node=8 ... -m finetune_trainer run ...
"""

from __future__ import annotations

import sys

from finetune_api.contract import PERMANENT_EXIT_CODES


def exit_code_for(worker_codes: list[int]) -> int:
    """The pod's exit code for the workers' codes: permanent first, then signals, then the first failure."""
    failed = [c for c in worker_codes if c != 0]
    if not failed:
        return 0
    for code in failed:
        if code in PERMANENT_EXIT_CODES:
            return code
    for code in failed:
        if code < 0:  # killed by a signal, reported as -signum
            return 128 - code
    return failed[0]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as err:
        return exit_code_for([failure.exitcode for failure in err.failures.values()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
