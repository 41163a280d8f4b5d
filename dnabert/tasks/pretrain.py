"""The LightningModule: masks on the device, computes the MLM loss on masked positions, owns the optimiser.

Masking happens here rather than in the dataloader because workers run ahead of the trainer and never know
the optimiser step; here the mask rate follows `global_step` exactly, under gradient accumulation, several
workers and resume. All randomness (mask, dropout) is derived from (seed, step, micro-batch, rank), so a
resumed run draws exactly what an uninterrupted run would have drawn, with no RNG state to save.
"""

from __future__ import annotations

import collections
import math
import zlib
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from transformers import get_linear_schedule_with_warmup

from dnabert.data.masking import MaskSchedule, mask_batch
from dnabert.data.tokenizers.kmer import check_k, vocab_size
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.models import DEFAULT_FAMILY, build_model
from dnabert.models.components import IGNORE_INDEX, masked_lm_loss


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions (unlike hash())."""
    digest = zlib.crc32(repr(parts).encode())
    return (digest * 2654435761 + parts[0]) % (2**63 - 1)


def no_decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Biases and LayerNorm weights are exempt from weight decay (BERT's recipe)."""
    exempt = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or isinstance(module, torch.nn.LayerNorm):
                exempt.add(full_name)
    return exempt


def fuses_adamw(device_type: str, optim: dict[str, Any], precision: str) -> bool:
    """Fused AdamW on CUDA unless ``optim.fused`` is false, and never under fp16 mixed precision: its gradient
    scaler cannot clip the gradients of an optimizer that unscales them inside its step (Lightning refuses at the
    first step), which is what ``precision=auto`` picks on GPUs without bf16 (V100, RTX 2080 Ti)."""
    return device_type == "cuda" and bool(optim.get("fused", True)) and not precision.startswith("16")


def build_adamw(model: torch.nn.Module, optim: dict[str, Any], precision: str = "32-true") -> torch.optim.AdamW:
    """The recipe's AdamW: weight decay except on biases and LayerNorm weights; fused where ``fuses_adamw``."""
    exempt = no_decay_parameter_names(model)
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    groups = [
        {"params": [p for n, p in named if n not in exempt], "weight_decay": optim["weight_decay"]},
        {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0},
    ]
    fused = fuses_adamw(next(model.parameters()).device.type, optim, precision)
    return torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"], fused=fused or None)


class MaskedLMModule(L.LightningModule):
    """Masked-language-model pretraining of any model family (dnabert.models) on k-mer or BPE ids, with the
    DNABERT optimiser and schedules."""

    def __init__(
        self,
        k: int,
        model_config: dict[str, Any],
        masking: dict[str, Any],
        optim: dict[str, Any],
        seed: int = 0,
        max_consecutive_nonfinite: int = 20,
        train_config: dict[str, Any] | None = None,
        packed: bool = False,
        compile_model: bool = False,
        attention: str = "sdpa",
        head_on_masked_only: bool = True,
        family: str = DEFAULT_FAMILY,
        tokenizer_vocab_size: int | None = None,
    ) -> None:
        """Performance levers, each with its off switch: ``packed``: rows hold several windows
        (``data.pack_rows``); ``compile_model``: torch.compile the model in place, state-dict keys unchanged
        (``model.compile``); ``attention``: "sdpa" or "flex" (``model.attention``; BERT: for packed rows,
        DNABERT-2: every row);
        ``head_on_masked_only``: the MLM head runs on masked positions only (``model.head_on_masked_only``).
        ``family`` picks the model code (``model.family``); ``tokenizer_vocab_size`` is the BPE tokenizer's
        size (None: the k-mer vocabulary of k), which the model's vocabulary must equal."""
        super().__init__()
        self.save_hyperparameters()
        self.k = check_k(k)
        self.mask_mode = masking.get("mode", "whole_kmer")
        self.model = build_model(family, model_config, attention=attention)
        expected_vocab = tokenizer_vocab_size if tokenizer_vocab_size is not None else vocab_size(k)
        if self.model.config.vocab_size != expected_vocab:
            tokens = "the BPE tokenizer" if tokenizer_vocab_size else f"k={k}"
            raise DnabertError(
                f"model.vocab_size={self.model.config.vocab_size} does not fit {tokens} (needs {expected_vocab}); "
                "leave model.vocab_size at its default ${tokenizer.vocab_size}."
            )
        if tokenizer_vocab_size is not None and self.mask_mode != "token":
            raise DnabertError(
                f"masking.mode={self.mask_mode!r} works on overlapping k-mers; BPE tokens need masking=token."
            )
        self.family = family
        self.packed = packed
        self.head_on_masked_only = head_on_masked_only
        if compile_model:  # dynamic: micro-batch widths (and packed row counts) vary from batch to batch
            self.model.compile(dynamic=True)
        self.schedule = MaskSchedule(
            rate=masking["rate"], final_rate=masking["final_rate"], switch_step=masking.get("switch_step")
        )
        self.optim_config = optim
        self.seed = seed
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.consecutive_nonfinite = 0
        self.skipped_steps = 0
        # Windows of the micro-batches since the last optimiser step: reported when a step goes non-finite.
        self._recent_windows: collections.deque[torch.Tensor] = collections.deque(maxlen=64)

    # ----------------------------------------------------------------------------------------- masking
    def on_before_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Count real tokens and pick the mask seed on the CPU, so the training step needs no host sync."""
        windows = batch["window"]
        batch["num_tokens"] = int((batch["input_ids"] != PAD_ID).sum())
        training = self.trainer is not None and self.trainer.training
        step = self.global_step if training else -1  # held-out masks stay the same at every evaluation
        batch["mask_seed"] = derive_seed(self.seed, step, zlib.crc32(windows.numpy().tobytes()))
        if training:
            self._recent_windows.append(windows.clone())
        return batch

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Mask on the device at the rate of the current optimiser step (held-out: the base rate)."""
        training = self.trainer is not None and self.trainer.training
        rate = self.schedule.rate_at(self.global_step) if training else self.schedule.rate
        generator = torch.Generator(device=batch["input_ids"].device).manual_seed(batch["mask_seed"])
        batch["input_ids"], batch["labels"] = mask_batch(
            batch["input_ids"], self.k, rate, generator, mode=self.mask_mode,
            vocab_size=self.model.config.vocab_size,
        )
        batch["mask_rate"] = rate
        return batch

    # ------------------------------------------------------------------------------------------- steps
    def masked_lm_outputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss and accuracy over masked positions only; the LM head runs on those positions alone."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        masked = labels != IGNORE_INDEX
        logits = self.model(input_ids, masked_positions=masked, packed=self.packed,
                            head_on_masked_only=self.head_on_masked_only)
        targets = labels[masked]
        correct = (logits.argmax(dim=-1) == targets).sum()
        return {"loss": masked_lm_loss(logits, targets), "correct": correct, "count": masked.sum()}

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Reseed dropout from (seed, micro-batch): resume replays the same dropout masks, and a micro-batch gets
        the same dropout whichever rank computes it (the windows make each micro-batch's seed unique)."""
        torch.manual_seed(derive_seed(self.seed, batch["mask_seed"]))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = self.masked_lm_outputs(batch)
        self.log("train/loss", outputs["loss"], prog_bar=True)
        self.log("train/ppl", torch.exp(outputs["loss"].detach()))
        self.log("train/acc", outputs["correct"] / outputs["count"].clamp(min=1))
        self.log("mask_rate", batch["mask_rate"])
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        return outputs["loss"]

    def on_validation_epoch_start(self) -> None:
        self._val_totals = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate sums so held-out loss is the mean over masked tokens of all ranks, not of batches."""
        outputs = self.masked_lm_outputs(batch)
        count = outputs["count"].double()
        self._val_totals += torch.stack([outputs["loss"].double() * count, outputs["correct"].double(), count])

    def on_validation_epoch_end(self) -> None:
        loss_sum, correct, count = self.trainer.strategy.reduce(self._val_totals, reduce_op="sum").tolist()
        if count == 0:
            return
        loss = loss_sum / count
        self.log("val/loss", loss, prog_bar=True, rank_zero_only=True)
        self.log_dict({"val/ppl": math.exp(loss), "val/acc": correct / count}, rank_zero_only=True)

    # ---------------------------------------------------------------------------- non-finite guard
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip an update whose gradients are not finite, so one bad batch cannot corrupt the weights.

        Dropping the gradients (None) makes AdamW leave the parameters and their moments untouched.
        This costs one host sync per optimiser step (not per micro-batch).
        """
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self.consecutive_nonfinite = 0
            self._recent_windows.clear()
            return
        for param in self.parameters():
            param.grad = None
        self.consecutive_nonfinite += 1
        self.skipped_steps += 1
        windows = [tuple(w) for batch in self._recent_windows for w in batch.tolist()]
        self._recent_windows.clear()
        rank_zero_warn(
            f"Non-finite loss or gradient at step {self.global_step}: update skipped "
            f"({self.consecutive_nonfinite} in a row, {self.skipped_steps} in all). "
            f"Windows (genome, contig, start, end) of that step: {windows[:8]}"
            + (" ..." if len(windows) > 8 else "")
        )
        self.log("train/skipped_steps", float(self.skipped_steps))
        if self.consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise DnabertError(
                f"{self.consecutive_nonfinite} consecutive optimiser steps had non-finite gradients "
                f"(last at step {self.global_step}); stopping. The last checkpoint before this is intact. "
                "Lower optim.lr, use precision=bf16-mixed instead of fp16, or check the data."
            )

    # ---------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_config
        optimizer = build_adamw(self.model, cfg, str(self.trainer.precision))
        total_steps = cfg.get("total_steps") or self.trainer.max_steps
        if not total_steps or total_steps < 0:
            raise DnabertError("optim.total_steps is unset and trainer.max_steps is not a positive number.")
        scheduler = get_linear_schedule_with_warmup(optimizer, cfg["warmup_steps"], total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def uniform_loss(k: int) -> float:
    """Cross-entropy of a model that knows nothing: ln(4^k). The first reference point of a curve."""
    return k * math.log(4)


