"""Fine-tuning: sequence classification or regression on a pretrained (or random) backbone.

The head is DNABERT's (transformers' ``BertForSequenceClassification``): the final [CLS] state through a pooler
(dense + tanh), dropout, a linear classifier. Its parameters are ``pooler.dense.*`` and ``classifier.*`` beside
``backbone.*``, so the export is a prefix rename (``dnabert.run.saved_models.export_classifier``).

The backbone is any module with ``encode(input_ids, attention_mask) -> (B, T, H)`` and ``config.hidden_size``
(``DnaBertForMaskedLM`` without its MLM head; DNABERT-2's MosaicBERT has the same interface). A sequence longer than
the positions arrives as several windows (``dnabert.data.labelled``); their logits are averaged.

Randomness: the head is initialised from the seed before any pretrained weights are loaded into the backbone, and
dropout is reseeded from (seed, step) at every step, so `pretrained=none` and `pretrained=<run>` runs differ only in
the backbone's initial weights, and a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from transformers import get_linear_schedule_with_warmup

from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.tasks.metrics import LOWER_IS_BETTER, split_metrics
from dnabert.tasks.pretrain import build_adamw, derive_seed


def average_by_sequence(values: torch.Tensor, sequence_index: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """Mean of the rows of `values` (W, D) that belong to each sequence (`sequence_index` (W,)): (num_sequences, D)."""
    sums = values.new_zeros(num_sequences, values.shape[1]).index_add_(0, sequence_index, values)
    counts = torch.bincount(sequence_index, minlength=num_sequences).clamp(min=1).to(values.dtype)
    return sums / counts[:, None]


@torch.no_grad()
def mean_pooled_embeddings(backbone: nn.Module, input_ids: torch.Tensor, sequence_index: torch.Tensor,
                           num_sequences: int) -> torch.Tensor:
    """One vector per sequence from a frozen backbone: the mean final hidden state over its real tokens, averaged
    over its windows. Used by the probe: an MLM never trains [CLS], so its state says little before fine-tuning."""
    real = input_ids != PAD_ID
    hidden = backbone.encode(input_ids, attention_mask=real).float()
    return average_by_sequence(window_means(hidden, real), sequence_index, num_sequences)


def window_means(hidden: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """(W, H): each window's mean hidden state over its real tokens ([CLS] and [SEP] included, padding not)."""
    return (hidden * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True).clamp(min=1)


class Pooler(nn.Module):
    """BERT's pooler (``bert.pooler`` in transformers): dense + tanh on the [CLS] state."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, cls_state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(cls_state))


class SequenceClassifier(nn.Module):
    """Backbone + pooler + dropout + linear head; ``num_outputs`` classes, or 1 for regression."""

    def __init__(self, backbone: nn.Module, num_outputs: int, dropout: float = 0.1,
                 initializer_range: float = 0.02) -> None:
        super().__init__()
        hidden_size = backbone.config.hidden_size
        self.backbone = backbone
        self.pooler = Pooler(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)
        for layer in (self.pooler.dense, self.classifier):  # BERT's initialisation
            nn.init.normal_(layer.weight, std=initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, sequence_index: torch.Tensor, num_sequences: int) -> torch.Tensor:
        """Per-sequence outputs (num_sequences, num_outputs): the mean of the logits of each sequence's windows."""
        hidden = self.backbone.encode(input_ids, attention_mask=input_ids != PAD_ID)
        logits = self.classifier(self.dropout(self.pooler(hidden[:, 0])))
        return average_by_sequence(logits, sequence_index, num_sequences)


class FineTuneModule(L.LightningModule):
    """Trains a SequenceClassifier; evaluates the dev split each epoch on all of it and keeps the dev history."""

    def __init__(
        self,
        classifier: SequenceClassifier,
        task_type: str,
        optim: dict[str, Any],
        seed: int,
        selection_metric: str,
        freeze_backbone: bool = False,
        backbone: dict[str, Any] | None = None,
        labels: list[str] | None = None,
        adapter: dict[str, Any] | None = None,
    ) -> None:
        """``backbone``: what rebuilds the classifier for export (family, k, model config); ``labels``: class names
        in id order (none for regression); ``adapter``: the LoRA settings the classifier's encoder carries (None:
        none), for the same rebuild."""
        super().__init__()
        self.save_hyperparameters(ignore=["classifier"])
        self.classifier = classifier
        self.task_type = task_type
        self.optim_config = optim
        self.seed = seed
        self.selection_metric = selection_metric
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:  # a linear probe on fixed features (pooler and classifier still train)
            classifier.backbone.requires_grad_(False)
        self.dev_history: list[dict[str, float]] = []
        self._dev_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._train_loss = torch.zeros(2, dtype=torch.float64)

    def train(self, mode: bool = True) -> FineTuneModule:
        """A frozen backbone stays in eval mode (no dropout): its features are fixed, as a linear probe needs."""
        super().train(mode)
        if self.freeze_backbone:
            self.classifier.backbone.eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(batch["input_ids"], batch["sequence_index"], batch["labels"].shape[0])

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task_type == "regression":
            return F.mse_loss(outputs.squeeze(-1).float(), targets.float())
        return F.cross_entropy(outputs.float(), targets)

    def split_scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """A whole split's metrics and its loss: any of them can choose the checkpoint, and the report shows it."""
        return {**split_metrics(outputs, targets, self.task_type), "loss": float(self.loss(outputs, targets))}

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Dropout from (seed, step): a resumed run and a run from another backbone draw the same masks."""
        torch.manual_seed(derive_seed(self.seed, self.global_step))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self(batch), batch["labels"])
        self.log("train/loss", loss, prog_bar=True)
        self.log("lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._dev_outputs.append((self(batch).detach(), batch["labels"]))

    def on_validation_epoch_end(self) -> None:
        """Metrics over the whole dev split (gathered from all ranks), logged as dev/<metric>, kept in the history."""
        if not self._dev_outputs:
            return
        outputs = torch.cat([out for out, _ in self._dev_outputs])
        targets = torch.cat([target for _, target in self._dev_outputs])
        self._dev_outputs.clear()
        if self.trainer.world_size > 1:
            outputs, targets = (self.unshard(t) for t in (outputs, targets))
        metrics = self.split_scores(outputs, targets)
        self.log_dict({f"dev/{name}": value for name, value in metrics.items()}, prog_bar=False)
        if not self.trainer.sanity_checking:
            self.dev_history.append({"epoch": self.current_epoch, **metrics})

    def unshard(self, shard: torch.Tensor) -> torch.Tensor:
        """This rank's dev outputs -> the whole split's, in order and without the repeats DistributedSampler pads
        with: rank r holds items r, r + W, r + 2W ... of the split followed by its first items, so the ranks'
        tensors interleaved and cut to the split's length are the split. The metrics and the checkpoint choice are
        then those of one process."""
        gathered = self.all_gather(shard)  # (W, n, ...): each rank has the same n
        return gathered.transpose(0, 1).flatten(0, 1)[: len(self.trainer.val_dataloaders.dataset)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dev_history"] = list(self.dev_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.dev_history = list(checkpoint.get("dev_history", []))

    def best_epoch(self) -> dict[str, float]:
        """The history entry with the best selection metric (the first of equals, as ModelCheckpoint keeps it)."""
        if not self.dev_history:
            raise DnabertError("No dev evaluation happened; set max_epochs to at least 1.")
        sign = 1 if self.selection_metric in LOWER_IS_BETTER else -1
        return min(self.dev_history, key=lambda entry: sign * entry[self.selection_metric])

    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.optim_config
        optimizer = build_adamw(self.classifier, optim, str(self.trainer.precision))
        total_steps = int(self.trainer.estimated_stepping_batches)
        warmup_steps = optim.get("warmup_steps")  # set: a number of steps (the DNABERT-2 scripts' presets)
        if warmup_steps is None:
            warmup_steps = math.ceil(optim["warmup_fraction"] * total_steps)
        scheduler = get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def predict(classifier: SequenceClassifier, loader: torch.utils.data.DataLoader,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs and targets of a whole split, in loader order, with dropout off."""
    was_training = classifier.training
    classifier.eval()
    outputs, targets = [], []
    for batch in loader:
        outputs.append(classifier(batch["input_ids"].to(device), batch["sequence_index"].to(device),
                                  batch["labels"].shape[0]).float().cpu())
        targets.append(batch["labels"])
    classifier.train(was_training)
    return torch.cat(outputs), torch.cat(targets)
