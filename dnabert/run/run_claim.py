"""One writer per run directory: the run's first process holds a lock on `<run dir>/run.lock` for its whole life, and
a second launch on that directory ends at once (exit 2) with one line naming the holder.

Why it looks like this:
- A POSIX record lock (`fcntl.lockf`), not a heartbeat file with a timeout: the kernel drops it when its process
  dies, however it dies (SIGKILL, the OOM killer), so a dead run never blocks the rerun or the requeue, and there
  is no timeout to tune.
  NFS (v4 itself, v3 through lockd) and Lustre (mounted with `-o flock`) enforce it across nodes. Unlike `flock`,
  forked children (DataLoader workers) do not share it, so it ends with the holder, not with its last worker; and
  on Linux NFS `flock` is emulated with these locks anyway.
- Node loss: the file server drops the lock of a client it no longer hears from (NFSv4 after its grace time, 90 s by
  default; Lustre when it evicts the client); NFSv3 keeps it until that node boots again (deleting run.lock frees
  the directory). A file system without working locks (NFS mounted `nolock` without lockd, Lustre `noflock`)
  answers ENOLCK/ENOSYS: the launch stops and says so; `lock_run_dir=false` runs without this protection.
  A mount whose locks are node-local (Lustre `localflock`, NFS `local_lock=all`) protects within one node only.
- It is taken in a Hydra callback (configs/hydra/default.yaml), before Hydra writes `.hydra/` and the log into the
  directory: a refused launch leaves the holder's directory as it was.
- The processes of one run share it. Only the launching process (global rank 0) takes it. The ranks Lightning starts
  (LOCAL_RANK, NODE_RANK) and torchrun's (RANK) come after it and take nothing; SLURM starts every task at once, so
  a task other than task 0 waits until its own job's task 0 (same job id, same restart count) holds the directory
  before Hydra writes anything; when task 0 is refused, `srun --kill-on-bad-exit=1` (slurm/*.sbatch) ends them.
- The lock is the claim; the file's JSON (host, pid, SLURM job, start time) only names the holder in the message.
  Only this module opens the file: closing any descriptor of it in the holding process would drop a POSIX lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dnabert.errors import DnabertError
from dnabert.run.cluster import slurm_job_id, under_slurm
from dnabert.run.validate import SETTINGS, check_value

LOCK_FILE = "run.lock"
SETTING = "lock_run_dir"
# Rank variables of processes that a run's launching process (or torchrun) started after it took the claim.
LAUNCHED_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
# How long a SLURM task other than task 0 waits for its task 0 to claim the directory.
TASK_WAIT_S = 600.0
POLL_S = 0.25
HELD_ERRNOS = (errno.EACCES, errno.EAGAIN)

# Run directory (resolved) -> the descriptor of its lock file, for each directory this process holds.
_held: dict[Path, int] = {}


@dataclass(frozen=True)
class Holder:
    """Who holds a run directory, as its lock file records it."""

    host: str
    pid: int
    since: str
    slurm_job: str | None = None
    slurm_restart: int = 0

    @classmethod
    def this_process(cls) -> Holder:
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   since=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), slurm_job=slurm_job_id(),
                   slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", 0)))

    def same_slurm_run(self, other: Holder) -> bool:
        """Whether both are processes of one start of one SLURM job (a requeue is another start)."""
        return self.slurm_job is not None and (self.slurm_job, self.slurm_restart) == (other.slurm_job,
                                                                                       other.slurm_restart)

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job}" if self.slurm_job else ""
        restart = f" restart {self.slurm_restart}" if self.slurm_job and self.slurm_restart else ""
        return f"a run on host {self.host} (pid {self.pid}{job}{restart}) since {self.since}"

    def how_to_stop(self) -> str:
        kill = f"kill {self.pid} on {self.host}"
        return f"scancel {self.slurm_job} / {kill}" if self.slurm_job else kill


def unwritable(run_dir: Path, err: OSError) -> DnabertError:
    return DnabertError(f"Cannot write to the run directory {run_dir} ({err.strerror}). "
                        "Set paths.output_root (or paths.output_dir) to a writable folder.")


def check_output_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{socket.gethostname()}-{os.getpid()}"  # ranks/nodes probe at once
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise unwritable(run_dir, err) from err


def read_holder(run_dir: Path) -> Holder | None:
    """The holder the lock file names; None when there is no readable record (yet). Never call it in the holding
    process (opening and closing the file there would drop its lock)."""
    try:
        return Holder(**json.loads((run_dir / LOCK_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def in_use(run_dir: Path, holder: Holder | None) -> DnabertError:
    who = holder.describe() if holder else "another process (it has not recorded itself yet)"
    stop = f" ({holder.how_to_stop()})" if holder else ""
    return DnabertError(f"{run_dir} is in use by {who}; wait for it to end, stop it{stop}, or pick another "
                        "run_name=.")


def claim_run_dir(run_dir: Path) -> None:
    """Hold `run_dir` for the rest of this process's life, or raise a DnabertError naming the process that does."""
    key = run_dir.resolve()
    if key in _held:
        return
    try:  # nothing else is written: a refused launch leaves even the directory's modification time alone
        run_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: the holder's record
    except OSError as err:
        raise unwritable(run_dir, err) from err
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(descriptor)
        if err.errno not in HELD_ERRNOS:
            raise DnabertError(
                f"Cannot lock {run_dir / LOCK_FILE} ({err.strerror}): the file system of the run directory has no "
                "working file locks (NFS mounted with nolock, Lustre without -o flock). Put paths.output_root on one "
                f"that has them, or set {SETTING}=false to run without the check that no other run writes there."
            ) from err
        raise in_use(run_dir, holder_when_recorded(run_dir)) from err
    record = json.dumps(asdict(Holder.this_process())).encode()
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, record + b"\n", 0)
    os.fsync(descriptor)
    _held[key] = descriptor


def holder_when_recorded(run_dir: Path, wait_s: float = 2.0) -> Holder | None:
    """The holder's record; a holder that has just taken the lock writes it a moment later."""
    deadline = time.monotonic() + wait_s
    while (holder := read_holder(run_dir)) is None and time.monotonic() < deadline:
        time.sleep(POLL_S / 5)
    return holder


def release_run_dirs() -> None:
    """Give up every run directory this process holds (its end does the same)."""
    while _held:
        os.close(_held.popitem()[1])


def wait_for_own_claim(run_dir: Path, timeout_s: float = TASK_WAIT_S) -> None:
    """A SLURM task other than task 0: go on once task 0 of this same job start holds `run_dir`."""
    me = Holder.this_process()
    deadline = time.monotonic() + timeout_s
    while not ((holder := read_holder(run_dir)) and holder.same_slurm_run(me)):
        if time.monotonic() > deadline:
            raise in_use(run_dir, holder)
        time.sleep(POLL_S)


def launches_the_run() -> bool:
    """Whether this process is a run's first: not a rank that the launching process or torchrun started, nor a SLURM
    task other than task 0."""
    ranks = [os.environ.get(name, "0") for name in LAUNCHED_RANK_VARIABLES]
    if under_slurm():
        ranks.append(os.environ.get("SLURM_PROCID", "0"))
    return all(rank == "0" for rank in ranks)


def claim_for(config: DictConfig) -> None:
    """Claim the run directory (`paths.output_dir`) of a composed config in the launching process; in another SLURM
    task, wait for task 0's claim; nothing with `lock_run_dir=false`."""
    try:
        enabled = OmegaConf.select(config, SETTING, default=True)
        run_dir = Path(config.paths.output_dir)
    except OmegaConfBaseException:
        return  # the run reports the config's problem itself
    check_value(next(row for row in SETTINGS if row.key == SETTING), SETTING, enabled, config)
    if not enabled:
        return
    if launches_the_run():
        claim_run_dir(run_dir)
    elif under_slurm():
        wait_for_own_claim(run_dir)


class ClaimRunDirectory(Callback):
    """Hydra callback: claim a run's directory before Hydra writes into it (a run), or as its job starts (each job of
    a multirun, in its own directory); give it up when the job ends."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        claim_or_exit(config)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        claim_or_exit(config)  # a run's claim is held already

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_run_dirs()


def claim_or_exit(config: DictConfig) -> None:
    """Hydra turns a callback's exception into a warning: a refusal is printed and ends the process here."""
    try:
        claim_for(config)
    except DnabertError as err:
        print(f"dnabert: error: {err}", file=sys.stderr)
        sys.exit(2)
