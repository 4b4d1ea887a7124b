"""Shared by the scripts in tests/dist that the distributed tests launch, and the tests' side of
their result protocol.

A script's ranks run under `run_rank(main)`. Rank 0 reports with `emit_result(payload)`: one line
`RESULT {json}` on stdout. A rank whose main raises prints one line `RANK_ERROR {json}` (its rank,
the world size, the exception and the traceback) on stdout, the traceback on stderr, and exits 1; the launcher
then stops the other ranks. The tests read the launcher's output with `parse_result`, which fails
with each failed rank's own traceback, every line prefixed by its rank, before anything else.
`MASSIVE_MT_TEST_FAIL_RANK=R` makes rank R raise at start (to test this protocol).
"""
import json
import os
import sys
import traceback

RESULT = "RESULT "
RANK_ERROR = "RANK_ERROR "
FAIL_RANK_ENV = "MASSIVE_MT_TEST_FAIL_RANK"


# ----------------------------------------------------------------------------- rank side

def full_params(engine):
    """Collective: the full fp32 (master) parameters in named_parameters order, as one float64 vector."""
    import torch

    from massive_mt.engine.checkpoint import full_fp32_state_dict
    return torch.cat([v.double().reshape(-1) for v in full_fp32_state_dict(engine).values()])


def emit_result(payload: dict) -> None:
    """The script's result, printed by one rank (rank 0)."""
    print(RESULT + json.dumps(payload), flush=True)


def exit_now(code: int) -> None:
    """Leave without running C++ static destructors. Call it after the result is printed and every
    rank has passed the final barrier: gloo/shm threads torn down at interpreter exit occasionally
    abort a rank ("terminate called without an active exception") after a successful check."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def finish(payload: dict, rank: int) -> None:
    """The end of a script's run: rank 0 prints the result, every rank passes the final barrier, then
    leaves with `exit_now(0)`."""
    import deepspeed.comm as dist

    if rank == 0:
        emit_result(payload)
    dist.barrier()
    exit_now(0)


def run_rank(main) -> None:
    """Run one rank's `main()`; an exception is reported as this rank's RANK_ERROR line, exit status 1."""
    rank = int(os.environ.get("RANK", "0"))
    try:
        if os.environ.get(FAIL_RANK_ENV) == str(rank):
            raise RuntimeError(f"injected failure on rank {rank} ({FAIL_RANK_ENV}={rank})")
        code = main()
    except Exception as e:
        tb = traceback.format_exc()
        sys.stderr.write(tb)
        print(RANK_ERROR + json.dumps({"rank": rank, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                                       "error": f"{type(e).__name__}: {e}", "traceback": tb}), flush=True)
        exit_now(1)
    exit_now(0 if code is None else code)


# ----------------------------------------------------------------------------- test side

def rank_errors(stdout: str) -> list[dict]:
    """The RANK_ERROR records in a launcher's stdout, by rank."""
    errors = [json.loads(l[len(RANK_ERROR):]) for l in stdout.splitlines() if l.startswith(RANK_ERROR)]
    return sorted(errors, key=lambda e: e["rank"])


def format_rank_errors(errors: list[dict]) -> str:
    """Each failed rank's traceback, every line prefixed with `[rank R]`."""
    return "\n".join(f"rank {e['rank']} failed: {e['error']}\n" +
                     "\n".join(f"[rank {e['rank']}] {line}" for line in e["traceback"].rstrip().splitlines())
                     for e in errors)


def parse_result(stdout: str, stderr: str = "", returncode: int = 0) -> dict:
    """The last RESULT payload; AssertionError with the failed ranks' own errors when a rank raised,
    or with the exit status and the output's tails when there is no RESULT line."""
    errors = rank_errors(stdout)
    if errors:
        raise AssertionError(format_rank_errors(errors))
    lines = [l for l in stdout.splitlines() if l.startswith(RESULT)]
    if not lines:
        raise AssertionError(f"no RESULT line (exit status {returncode})\n--- stdout\n{stdout[-3000:]}"
                             f"\n--- stderr\n{stderr[-6000:]}")
    return json.loads(lines[-1][len(RESULT):])
