"""python -m pretrain.submit --recipe NAME --nodes N --gpus-per-node G --partition P --time MIN [flags]

Submits pre-training to SLURM with submitit, as DINO's run_with_submitit.py does: one task per GPU,
torch.distributed set up from SLURM's variables, and requeueing when the job is preempted or reaches
its time limit. Every other flag is passed to `python -m pretrain` unchanged, and is checked here
first, so a bad flag fails on the login node, not after hours in the queue.

Preemption and time limits: SLURM sends SIGUSR2 (``--signal``) shortly before the end; the run saves
at the next step boundary, submitit requeues the job, and the requeued job resumes from
OUTPUT_DIR/checkpoint.pth exactly where it stopped. SIGTERM also saves and stops; partitions with
PreemptMode=REQUEUE then restart the job themselves. `--cluster local` runs the same job on this
machine through submitit's local executor (what the tests use).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import submitit

from pretrain.__main__ import CLI_ONLY, build_parser, main
from pretrain.checkpoint import LATEST
from pretrain.config import ConfigError, resolve
from pretrain.errors import ArgumentParser, cli_main
from pretrain.train import STOP_SIGNALS, StopRequest, local_batch_size

log = logging.getLogger(__name__)

# submitit's timeout/preemption signal (SUBMITIT_PREEMPT_SIGNAL, USR2 by default).
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class Trainer:
    """The submitted callable: runs ``python -m pretrain ARGV`` in each task; picklable."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)

    def __call__(self) -> str:
        # Keep every GPU visible: pretrain.distributed picks cuda:LOCAL_RANK itself.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        stop = StopRequest((*STOP_SIGNALS, PREEMPT_SIGNAL))
        code = main(self.argv, stop=stop)
        if code != 0:
            raise RuntimeError(f"python -m pretrain exited with code {code} (the error line is in this task's log)")
        if stop.stopping and stop.received == PREEMPT_SIGNAL.name:
            self._requeue()
        return "stopped" if stop.stopping else "finished"

    def _requeue(self) -> None:
        # The checkpoint is on disk; hand over to submitit's own handler for the signal (restored when
        # training ended), which calls checkpoint() below, requeues the job and exits. Non-zero ranks
        # return from it and end normally.
        handler = signal.getsignal(PREEMPT_SIGNAL)
        if callable(handler):
            handler(PREEMPT_SIGNAL, None)

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues: the same command, resuming from OUTPUT_DIR/checkpoint.pth. Once
        that file exists, a ``--resume FILE`` is dropped: it would restart from FILE every time."""
        return submitit.helpers.DelayedSubmission(Trainer(self.requeue_argv()))

    def requeue_argv(self) -> list[str]:
        args = build_parser().parse_args(self.argv)
        output_dir = Path(args.output_dir or resolve(args.recipe, {}).output_dir)
        if args.resume is None or not (output_dir / LATEST).is_file():
            return list(self.argv)
        argv, skip = [], False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg == "--resume":
                skip = True
            elif not arg.startswith("--resume="):
                argv.append(arg)
        return argv


def build_submit_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m pretrain.submit", description=__doc__, add_help=False,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("SLURM")
    group.add_argument("--nodes", type=int, default=1)
    group.add_argument("--gpus-per-node", type=int, default=8, help="one task per GPU (default 8)")
    group.add_argument("--partition", default=None, help="SLURM partition")
    group.add_argument("--time", type=int, default=72 * 60, help="time limit per job in minutes (default 4320)")
    group.add_argument("--cpus-per-task", type=int, default=10, help="DataLoader workers + 1 is a good value")
    group.add_argument("--mem-gb", type=int, default=None)
    group.add_argument("--max-requeues", type=int, default=20, help="submitit's max_num_timeout")
    group.add_argument("--job-name", default="snclr")
    group.add_argument("--job-dir", default=None, help="submitit's logs (default: OUTPUT_DIR/submitit)")
    group.add_argument("--cluster", choices=("slurm", "local"), default=None,
                       help="default: slurm when sbatch is on PATH; local runs on this machine")
    group.add_argument("-h", "--help", action="store_true")
    return parser


def submit(argv: list[str] | None = None) -> submitit.Job:
    """Check the pre-training flags, then submit one job of ``nodes x gpus_per_node`` tasks."""
    args, rest = build_submit_parser().parse_known_args(argv)
    for name, value, minimum in (("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node, 0),
                                 ("--time", args.time, 1), ("--cpus-per-task", args.cpus_per_task, 1),
                                 ("--max-requeues", args.max_requeues, 0)):
        if value < minimum:
            raise ConfigError(f"{name} {value}: expected at least {minimum}")
    pretrain_args = build_parser().parse_args(rest)
    overrides = {k: v for k, v in vars(pretrain_args).items() if k not in CLI_ONLY}
    config = resolve(pretrain_args.recipe, overrides)
    tasks = args.nodes * max(args.gpus_per_node, 1)
    local_batch_size(config.batch_size, tasks)
    executor = submitit.AutoExecutor(folder=args.job_dir or Path(config.output_dir) / "submitit",
                                     cluster=args.cluster, slurm_max_num_timeout=args.max_requeues,
                                     local_max_num_timeout=args.max_requeues)
    params = dict(name=args.job_name, nodes=args.nodes, tasks_per_node=max(args.gpus_per_node, 1),
                  gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task, timeout_min=args.time,
                  slurm_signal_delay_s=120)   # time to finish the step and write the checkpoint
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    executor.update_parameters(**params)
    return executor.submit(Trainer(rest))


@cli_main
def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        build_submit_parser().print_help()
        print("\nPre-training flags (python -m pretrain --help):")
        build_parser().print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = submit(argv)
    print(f"submitted job {job.job_id}; logs in {job.paths.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
