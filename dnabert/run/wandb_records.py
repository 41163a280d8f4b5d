"""What a wandb run already holds on disk: its transaction logs (`<run dir>/wandb/*-run-*-<id>/run-<id>.wandb`).

wandb writes every record of a run (config, history rows, summary) to that append-only file, online or offline;
`wandb sync` uploads it. An offline run that is resumed gets a new folder per process, and nothing but these files
knows which steps the earlier processes logged: a resumed process reads them so that it sends no step twice
(`dnabert.run.history.HistoryWandbLogger`). wandb 0.31 ships no Python reader, so this one follows the file's
framing: a 7-byte header (`:W&B`, a 2-byte magic, version 0), then 32 KiB blocks of chunks, each a CRC-32 of
(type byte + payload), a 2-byte length and a type (1 full, 2 first, 3 middle, 4 last), whose payloads join into
`wandb_internal_pb2.Record` messages. A process killed mid-write leaves a cut chunk at the end: reading stops there.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = b":W&B\xe1\xbe\x00"
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER = struct.Struct("<IHB")  # CRC-32, payload length, chunk type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
STEP_KEY = "trainer/global_step"  # Lightning's WandbLogger logs the trainer step with every row
BOOKKEEPING = frozenset({STEP_KEY, "epoch", "_step", "_runtime", "_timestamp"})


def record_payloads(path: Path) -> Iterator[bytes]:
    """The serialized records of one transaction log, up to the first damaged or cut chunk."""
    data = path.read_bytes()
    if not data.startswith(HEADER):
        return
    position, pending = len(HEADER), b""
    while True:
        room = BLOCK_SIZE - position % BLOCK_SIZE
        if room < CHUNK_HEADER.size:  # a block's last bytes are padding
            position += room
            continue
        if position + CHUNK_HEADER.size > len(data):
            return
        crc, length, kind = CHUNK_HEADER.unpack_from(data, position)
        payload = data[position + CHUNK_HEADER.size: position + CHUNK_HEADER.size + length]
        if kind == 0 or len(payload) < length or zlib.crc32(bytes([kind]) + payload) != crc:
            return
        position += CHUNK_HEADER.size + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload


def history_rows(path: Path) -> list[dict[str, Any]]:
    """The history rows (`run.log` calls) of one transaction log, values decoded from JSON.

    wandb stores a name with slashes (`train/loss`) as its parts (`nested_key`): joined here with slashes again."""
    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in record_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_logs(wandb_dir: Path, run_id: str) -> list[Path]:
    """Every transaction log of one run id under a `wandb` folder (one per process that logged), oldest first."""
    return sorted(wandb_dir.glob(f"*run-*-{run_id}/run-{run_id}.wandb"))


def logged_steps(logs: list[Path]) -> dict[str, int]:
    """For each metric, the highest trainer step at which these logs hold it."""
    highest: dict[str, int] = {}
    for path in logs:
        for row in history_rows(path):
            if STEP_KEY not in row:
                continue
            step = int(row[STEP_KEY])
            for key in row.keys() - BOOKKEEPING:
                highest[key] = max(step, highest.get(key, step))
    return highest


def summary_steps(summary: dict[str, Any]) -> dict[str, int]:
    """What a resumed online run holds, as far as its summary tells: every metric up to the last logged step."""
    if not isinstance(summary.get(STEP_KEY), int | float):
        return {}
    step = int(summary[STEP_KEY])
    return {key: step for key in summary.keys() - BOOKKEEPING if not key.startswith("_")}
