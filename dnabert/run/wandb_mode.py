"""wandb on compute nodes without internet: decided once, before any rank trains.

With an API key but no route to the W&B server, wandb retries for minutes and then fails inside Lightning's
setup, after the DDP ranks started. Here one short connection attempt decides first: unreachable means offline
mode (with one warning naming the offline run and the `wandb sync` command), unless the user insisted on online
(`logger.wandb.mode=online` or WANDB_MODE=online), which is then refused with one clear error. Every process
decides for itself (SLURM starts them apart); ranks that Lightning starts inherit the parent's WANDB_MODE.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.utilities import rank_zero_only

from dnabert.errors import DnabertError
from dnabert.run.cluster import wandb_has_credentials, wandb_offline

log = logging.getLogger("dnabert")
DEFAULT_WANDB_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 5.0


def wandb_server_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_WANDB_URL)


def unreachable_reason(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why a TCP connection to the server (or to the HTTP(S) proxy that would carry it) fails; None if it opens."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_url.hostname or "", proxy_url.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:  # refused, no route, DNS failure, timeout
        return f"{host}:{port}: {err.strerror or err}"


def insists_on_online(wandb_cfg: Any) -> bool:
    return os.environ.get("WANDB_MODE") == "online" or wandb_cfg.get("mode") == "online"


def settle_wandb_mode(loggers: Any, run_dir: Path) -> None:
    """Switch `logger.wandb` to offline when its server cannot be reached (see the module docstring).

    Without credentials nothing is decided here: `check_wandb` refuses online runs without a key.
    """
    wandb_cfg = (loggers or {}).get("wandb")
    if wandb_cfg is None or wandb_offline(wandb_cfg) or not wandb_has_credentials():
        return
    url = wandb_server_url()
    reason = unreachable_reason(url)
    if reason is None:
        return
    if insists_on_online(wandb_cfg):
        raise DnabertError(
            f"logger=wandb is set to online (logger.wandb.mode=online or WANDB_MODE=online), but the W&B server "
            f"{url} cannot be reached from {socket.gethostname()} ({reason}). Run where it is reachable, or drop "
            "that setting: the run then logs offline and tells you how to upload it later."
        )
    wandb_cfg.offline = True
    os.environ["WANDB_MODE"] = "offline"  # DDP ranks started from this process inherit it
    offline_runs = Path(wandb_cfg.get("save_dir") or run_dir) / "wandb" / f"offline-run-*-{wandb_cfg.get('id')}"
    if rank_zero_only.rank == 0:
        log.warning("wandb: %s cannot be reached from %s (%s); logging offline to %s. Upload it later with: "
                    "wandb sync %s", url, socket.gethostname(), reason, offline_runs, offline_runs)
