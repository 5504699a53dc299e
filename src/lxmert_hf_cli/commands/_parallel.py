"""`lxmert-hf extract` on several processes: which rank this process is, its device, and starting local ranks.

A process is a rank when a launcher set `WORLD_SIZE` > 1 (`accelerate launch -m lxmert_hf_cli extract ...`,
`torchrun -m lxmert_hf_cli extract ...`), or when `lxmert-hf extract --num-processes N` started it; how ranks share
the images and end with one store is [`lxmert_hf.detection.parallel`]'s part.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import signal
import sys

from lxmert_hf_cli._interrupt import signals_as_interrupt


def requested_rank(args: argparse.Namespace):
    """This process's `Rank` from the environment, or `None` for one process; refuses `--num-processes` under a
    launcher (which starts the processes itself) and `--num-processes` below 1."""
    from lxmert_hf.detection.parallel import rank_from_environment

    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {args.num_processes}.")
    rank = rank_from_environment()
    if rank is not None and args.num_processes is not None:
        raise ValueError(
            f"--num-processes {args.num_processes}: this process is already rank {rank.rank} of {rank.world_size} "
            "(WORLD_SIZE is set by accelerate launch or torchrun, which start the processes); leave "
            "--num-processes out under a launcher."
        )
    return rank


def rank_device(device, local_rank: int):
    """The GPU of local rank `local_rank` when `device` is CUDA without an index (`auto` or `cuda`): one per rank,
    in turn; any other device as given."""
    import torch

    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def spawn_local_ranks(args: argparse.Namespace, on_cpu: bool) -> int:
    """Run `args` (an `extract` command) as `args.num_processes` ranks, each in a process of its own; returns the
    exit code: 0 when every rank succeeded."""
    from lxmert_hf.detection.parallel import cpu_threads

    count = args.num_processes
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA or thread state inherited
    threads = cpu_threads(count) if on_cpu else None
    processes = [
        context.Process(target=_run_rank, args=(_rank_args(args), rank, count, threads), name=f"extract-rank-{rank}")
        for rank in range(count)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt as error:
        # Ctrl-C reached every process of the terminal; a SIGTERM (a job scheduler) only this one: pass it on. Each
        # rank then closes its part, keeping its finished images.
        if getattr(error, "signum", signal.SIGINT) != signal.SIGINT:
            for process in processes:
                if process.is_alive():
                    process.terminate()
        for process in processes:
            process.join()
        raise
    failed = [rank for rank, process in enumerate(processes) if process.exitcode != 0]
    if failed:
        raise ValueError(
            f"{len(failed)} of {count} processes (ranks {', '.join(map(str, failed))}) failed, see above; fix the "
            "cause and rerun the same command: every rank continues its part."
        )
    return 0


def _rank_args(args: argparse.Namespace) -> argparse.Namespace:
    rank_args = copy.copy(args)
    rank_args.num_processes = None
    return rank_args


def _run_rank(args: argparse.Namespace, rank: int, world_size: int, threads: int | None) -> None:
    """The body of a spawned rank: the environment a launcher would give it, then the command."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    os.environ.update(LOCAL_WORLD_SIZE=str(world_size))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        with signals_as_interrupt():
            code = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as error:
        print(f"lxmert-hf extract: error: rank {rank} of {world_size}: {error}", file=sys.stderr)
        code = 2
    sys.exit(code)
