"""Running on clusters: SLURM environment and preemption (checkpoint + requeue), launch checks, wandb run identity.

Why it looks like this:
- Lightning's own SLURM auto-requeue saves inside the signal handler, which can be in the middle of a gradient
  accumulation cycle, and its SIGTERM handler stops the loop after any micro-batch. `PreemptionCheckpoint`
  instead only records the signal; at the next optimiser-step boundary all ranks agree, save `last.ckpt`
  (atomically, through our CheckpointIO) and stop. The requeued job runs the same command, finds the same run
  directory and continues from that step: masks, dropout and data position are functions of the step.
- A crash in any rank ends the whole run (`EndRunOnCrash`): the data workers ignore SIGTERM (they must outlive a
  preemption signal until the step ends), so on an exception they are killed outright, or the process would wait
  for them at exit forever; the rank that failed first reports the error, the others stop with one line.
- Everything that would otherwise fail after DDP ranks were started (one rank dies, the others hang in a
  collective) is checked first, in the launching process: SLURM task counts, NCCL without CUDA, wandb online
  without credentials, a checkpoint of another model shape.
"""

from __future__ import annotations

import multiprocessing
import netrc
import os
import signal
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlparse

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from dnabert.errors import DnabertError
from dnabert.run.checkpoints import read_checkpoint

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
WANDB_ID_FILE = "wandb_run_id"
# Counter in the process group's key-value store: the rank that increments it first is the one that failed.
FAILURES_KEY = "dnabert/failures"
# SLURM tools on a login node are not a reason to nag about srun; jobs under SLURM are detected on their own
# (`under_slurm`, first called by the run-directory claim, before anything else of the run is imported).
warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
# Shape-defining model settings: a checkpoint whose values differ cannot be loaded into this run's model.
SHAPE_SETTINGS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "max_position_embeddings", "type_vocab_size")


# ------------------------------------------------------------------------------------------------ SLURM
def under_slurm() -> bool:
    """A SLURM batch job or step (not an interactive `srun --pty bash` / salloc shell), as Lightning decides."""
    return SLURMEnvironment.detect()


def check_slurm_tasks(num_nodes: int, devices: int) -> None:
    """One SLURM task per device: otherwise Lightning waits forever for ranks that were never started."""
    if not under_slurm():
        return
    tasks, nodes = int(os.environ["SLURM_NTASKS"]), int(os.environ.get("SLURM_NNODES", "1"))
    if "SLURM_STEP_ID" not in os.environ and devices * num_nodes > 1:
        raise DnabertError(
            f"trainer.devices={devices} x trainer.num_nodes={num_nodes} processes are needed but train.py was not "
            "started by srun. In the sbatch script, run `srun python train.py ...` (see slurm/README.md)."
        )
    if tasks != devices * num_nodes or nodes != num_nodes:
        raise DnabertError(
            f"SLURM started {tasks} tasks on {nodes} node(s) but trainer.devices={devices} x "
            f"trainer.num_nodes={num_nodes} = {devices * num_nodes} processes are expected. Start one task per "
            f"device (#SBATCH --nodes={num_nodes} --ntasks-per-node={devices}) or set trainer.devices and "
            "trainer.num_nodes to match the allocation."
        )


def cluster_plugins(num_nodes: int, devices: int) -> list[Any]:
    """Under SLURM: Lightning's SLURM environment (ranks, addresses) without its auto-requeue, which we replace."""
    if not under_slurm():
        return []
    check_slurm_tasks(num_nodes, devices)
    return [SLURMEnvironment(auto_requeue=False)]


def slurm_job_id() -> str | None:
    """This job's id as scontrol and scancel take it (`<array job>_<task>` for an array task); None outside SLURM."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")


def requeue_slurm_job() -> bool:
    """Ask SLURM to run this job again (same job id, same command); True when it accepted."""
    job_id = slurm_job_id()
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
    except OSError as err:
        rank_zero_warn(f"Could not run `scontrol requeue {job_id}` ({err}); resubmit the job by hand.")
        return False
    if result.returncode != 0:
        rank_zero_warn(f"`scontrol requeue {job_id}` failed: {result.stderr.strip()}. Resubmit the job by hand.")
        return False
    return True


class PreemptionCheckpoint(L.Callback):
    """On SIGUSR1 (SLURM `--signal`: time limit near; preemption with PreemptParameters=send_user_signal) or SIGTERM:
    finish the current optimiser step, save `<run dir>/checkpoints/last.ckpt` and stop; after SIGUSR1, rank 0 then
    requeues the SLURM job, which continues from that checkpoint.

    SIGTERM does not requeue: it comes from `scancel` (the user wants the job gone) or from a scheduler that requeues
    by itself (preemption with PreemptMode=REQUEUE, `scontrol requeue`). torch's DataLoader workers die on a
    SIGTERM that is not from their parent, so with workers the newest periodic checkpoint is the resume point then.
    The handler only sets a flag, so nothing heavy runs inside it.
    """

    def __init__(self, run_dir: str) -> None:
        self.checkpoint_path = Path(run_dir) / "checkpoints" / "last.ckpt"
        self.received: signal.Signals | None = None
        self.requeue = False
        self._previous_handlers: dict[signal.Signals, Any] = {}

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # SIGUSR1 wins over SIGTERM: a job signalled for its time limit should still requeue.
        if self.received is None or signum == signal.SIGUSR1:
            self.received = signal.Signals(signum)

    def _install_handlers(self) -> None:
        for signum in PREEMPTION_SIGNALS:
            previous = signal.signal(signum, self._on_signal)
            self._previous_handlers.setdefault(signum, previous)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Before dataloader workers fork: a worker that receives SLURM's SIGUSR1 then only sets its own flag."""
        if stage == "fit":
            self._install_handlers()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Again, because Lightning has since put in its own SIGTERM handler, which stops mid-accumulation."""
        self._install_handlers()
        rank_zero_info(f"Training from step {trainer.global_step} (SIGUSR1/SIGTERM: checkpoint, then stop).")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: the gradients of this step are not applied yet
        # Every rank must take the same branch (the save below has a barrier): stop if any rank was signalled.
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        self.requeue = trainer.strategy.reduce_boolean_decision(self.received == signal.SIGUSR1, all=False)
        trainer.save_checkpoint(self.checkpoint_path)
        rank_zero_info(
            f"{'SIGUSR1' if self.requeue else 'SIGTERM'}: saved {self.checkpoint_path} at step "
            f"{trainer.global_step}; stopping."
        )
        trainer.should_stop = True
        if not regular_validation_step(trainer):
            # Lightning validates once more on should_stop (meant for early stopping). A run that is not
            # interrupted does not validate at this step: that validation would add rows to the metrics history
            # that the uninterrupted run lacks, and spend the scheduler's grace period.
            trainer.limit_val_batches = 0

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Requeue last: SLURM ends this job at once, so everything else must be finished by now."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
        if self.requeue and trainer.is_global_zero and under_slurm() and requeue_slurm_job():
            rank_zero_info(f"Requeued SLURM job {os.environ['SLURM_JOB_ID']}: continues from {self.checkpoint_path}.")


def end_data_workers() -> None:
    """Kill this process's DataLoader workers (its daemonic multiprocessing children).

    They ignore SIGTERM (SLURM signals the whole process group; see `ignore_scheduler_signals`), and
    multiprocessing's exit handler ends daemonic children with SIGTERM and then waits for them: without this, a
    process whose training loop raised waits at exit forever, and under SLURM holds its GPUs until the time limit.
    """
    workers = [process for process in multiprocessing.active_children() if process.daemon]
    if not workers:
        return
    if threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler would turn these deaths into a second error ("worker killed by signal").
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=10)


def failed_first() -> bool:
    """Whether this rank's error is the run's first: the others then fail only because it stopped (a collective
    with a dead peer), and their errors would bury the real one.

    The process group's store (served by global rank 0) counts failures atomically. When it is unreachable,
    rank 0 is gone, so it failed first.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return True
    try:
        return dist.distributed_c10d._get_default_store().add(FAILURES_KEY, 1) == 1
    except (RuntimeError, OSError):  # torch raises DistNetworkError/DistStoreError (RuntimeError subclasses)
        return False


class EndRunOnCrash(L.Callback):
    """Any exception in any rank ends every process of the run within seconds, with a non-zero exit status and
    the error reported once.

    The first rank to fail kills its data workers and the ranks it launched (Lightning's launcher on one node),
    then lets the error propagate (traceback, exit 1). A rank that fails after it (its collective lost a peer)
    prints one line and exits at once. Ranks launched by something else end with their peer: under `srun
    --kill-on-bad-exit=1` SLURM kills them; a rank launched by Lightning is killed by its launcher, and a launcher
    whose child failed is killed by Lightning's child-process observer.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        end_data_workers()
        if not failed_first():
            print(f"dnabert: rank {trainer.global_rank} stopped because another rank failed first (its error is "
                  "reported above or in its own log).", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)  # its own error is a consequence; Lightning's clean-up would wait for the dead peer
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher):
            end_launched_ranks(launcher)
        finalize_loggers_quietly(trainer, exception)


def end_launched_ranks(launcher: _SubprocessScriptLauncher) -> None:
    """Kill the ranks this process launched, reap them, and forget them. Lightning's child-process observer
    watches the same list (`launcher.procs`): a killed child left in it makes the observer SIGKILL this process too
    while it still reports the error, which then ends with -9 instead of its traceback and exit 1."""
    launcher.kill(signal.SIGKILL)
    for process in launcher.procs:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # unkillable (uninterruptible I/O): the observer may still end it
            return
    launcher.procs.clear()


def finalize_loggers_quietly(trainer: L.Trainer, exception: BaseException) -> None:
    """Mark the loggers' runs failed here, where a logger that fails again (its folder deleted, the disk full: often
    the very error being handled) costs one line instead of a second traceback; Lightning then has none left to
    finalize."""
    for logger in trainer.loggers:
        try:
            logger.finalize("failed")
        except Exception as err:  # any logger, any backend: the run's own error is the one to report
            if err is not exception:
                rank_zero_warn(f"{type(logger).__name__} could not finish after the error below: {err}")
    trainer.loggers = []


def regular_validation_step(trainer: L.Trainer) -> bool:
    """Whether the micro-batch that just ended is one after which the run validates anyway (val_check_interval)."""
    every = trainer.val_check_batch
    return isinstance(every, int) and (trainer.fit_loop.epoch_loop.total_batch_idx + 1) % every == 0


def cluster_callbacks(run_dir: str) -> list[L.Callback]:
    """Callbacks that save a checkpoint and requeue when the scheduler signals preemption, and that end every
    process of the run when one of them fails."""
    return [PreemptionCheckpoint(run_dir), EndRunOnCrash()]


# --------------------------------------------------------------------------------------------- launch checks
def check_process_group_backend(strategy: Any, accelerator: str) -> None:
    """NCCL only works between CUDA devices; without them torch fails late, inside every rank."""
    backend = strategy.get("process_group_backend") if isinstance(strategy, Mapping) else None
    if backend != "nccl":
        return
    if accelerator == "cpu" or not torch.cuda.is_available() or not torch.distributed.is_nccl_available():
        raise DnabertError(
            f"trainer.strategy.process_group_backend=nccl needs CUDA GPUs, but trainer.accelerator={accelerator} "
            f"and this torch (CUDA build: {torch.version.cuda is not None}) sees {torch.cuda.device_count()} GPU(s). "
            "Use process_group_backend=gloo for CPU processes, or run on GPU nodes."
        )


def wandb_offline(wandb_cfg: Mapping[str, Any]) -> bool:
    mode = os.environ.get("WANDB_MODE", wandb_cfg.get("mode") or "online")
    disabled = os.environ.get("WANDB_DISABLED", "").lower() in ("1", "true")
    return bool(wandb_cfg.get("offline")) or disabled or mode in ("offline", "dryrun", "disabled")


def wandb_has_credentials() -> bool:
    """An API key in the environment or in the netrc file that `wandb login` writes, for the configured host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    netrc_path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def check_wandb(loggers: Mapping[str, Any] | None) -> None:
    """Online wandb with no key dies in rank 0 only while the other ranks hang: refuse before launching."""
    wandb_cfg = (loggers or {}).get("wandb")
    if wandb_cfg is None or wandb_offline(wandb_cfg) or wandb_has_credentials():
        return
    raise DnabertError(
        "logger=wandb is online but no W&B API key was found (WANDB_API_KEY or `wandb login`). Log in, or run "
        "offline with WANDB_MODE=offline (or logger.wandb.offline=true) and upload later with "
        "`wandb sync <run dir>/wandb/offline-run-*`."
    )


def check_launch(trainer_cfg: Mapping[str, Any], loggers: Mapping[str, Any] | None, devices: int,
                 num_nodes: int) -> None:
    """Everything that would otherwise fail after the DDP ranks were started."""
    check_process_group_backend(trainer_cfg.get("strategy"), str(trainer_cfg.get("accelerator")))
    check_slurm_tasks(num_nodes, devices)
    check_wandb(loggers)


def wandb_run_id(run_dir: str) -> str:
    """The run directory's wandb id, created once: a resumed or requeued run continues the same wandb run.

    Created with O_EXCL so that processes starting together (SLURM tasks, nodes) all read the same id.
    """
    path = Path(run_dir) / WANDB_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        run_id = uuid.uuid4().hex[:12]
        handle.write(run_id + "\n")
    return run_id


# ----------------------------------------------------------------------------------------------- checkpoints
def check_checkpoint_fits(ckpt_path: str, k: int, model_cfg: Mapping[str, Any]) -> None:
    """A checkpoint of another k or model size cannot be resumed: say which setting differs, not a shape error."""
    try:
        checkpoint = read_checkpoint(ckpt_path, mmap=True)
    except Exception as err:  # torch raises several types for unreadable files
        raise DnabertError(f"Checkpoint {ckpt_path} cannot be read ({err}). Point ckpt_path at another one.") from err
    saved = checkpoint.get("hyper_parameters", {})
    saved_model = saved.get("model_config", {})
    differences = [f"tokenizer.k={saved['k']} (this run: {k})"] if "k" in saved and saved["k"] != k else []
    differences += [
        f"model.{name}={saved_model[name]} (this run: {model_cfg[name]})"
        for name in SHAPE_SETTINGS
        if name in saved_model and name in model_cfg and saved_model[name] != model_cfg[name]
    ]
    if differences:
        raise DnabertError(
            f"Checkpoint {ckpt_path} was trained with {', '.join(differences)}. Use the settings it was trained "
            "with, or start a new run (another run_name) instead of resuming this one."
        )
