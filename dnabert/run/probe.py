"""Is the representation getting better for a task? A linear probe at every validation of a pretraining run.

At each validation, rank 0 embeds a fixed, seeded set of labelled sequences with the current model (eval mode, no
gradients: mean final hidden state per sequence), fits scikit-learn's logistic regression on the probe's train part
and scores its test part. It logs `probe/mcc`, `probe/auroc` and `probe/acc` to every logger; the run report plots
them. (BioNeMo v1 does this for protein models; no DNA framework did.)

Why a callback in run/ and not in tasks/: it is run machinery (when and on which rank to evaluate, what to log)
around any pretraining module with `.model.encode`; the embedding itself is tasks.finetune's
`mean_pooled_embeddings`, shared with fine-tuning.

It does not change the training trajectory: the model is in eval mode (dropout draws nothing), nothing uses the
global RNGs (the subset and split come from numpy's seeded generator, the logistic regression's lbfgs is
deterministic), and the model's mode is left as found. Other ranks go on to the next step and wait for rank 0 at
the next collective, for as long as the probe takes (seconds; BENCHMARKS.md has its cost).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, matthews_corrcoef, roc_auc_score
from sklearn.preprocessing import StandardScaler

from dnabert.data.genome import Reference
from dnabert.data.labelled import (
    Tokenize,
    collate_windows,
    kmer_tokenizer,
    label_space,
    read_labelled,
    split_rows,
    windowed_set,
)
from dnabert.data.vcf import read_vcf
from dnabert.errors import DnabertError
from dnabert.run.variants import VariantScorer
from dnabert.tasks.finetune import mean_pooled_embeddings

log = logging.getLogger("dnabert")
PROBE_METRICS = ("probe/mcc", "probe/auroc", "probe/acc")
VARIANT_PROBE_METRICS = ("probe/variant_auroc", "probe/variant_scored")


class DownstreamProbe(L.Callback):
    """Logistic regression on frozen embeddings of a labelled classification task, at every validation."""

    def __init__(self, path: str, k: int | None = None, max_sequences: int = 1000, test_fraction: float = 0.5,
                 seed: int = 0, batch_size: int = 256, sequence_column: str = "sequence", label_column: str = "label",
                 tokenize: Tokenize | None = None, max_positions: int | None = None) -> None:
        """Tokenises with k-mers of `k`, or with `tokenize` (a DNABERT-2 run's BPE); windows are `max_positions`
        tokens, by default the model's `max_position_embeddings`."""
        if (k is None) == (tokenize is None):
            raise ValueError("DownstreamProbe needs exactly one of k and tokenize")
        data = read_labelled(path, None, sequence_column, label_column)
        labels = label_space(data, "classification")
        chosen = np.sort(np.random.default_rng(seed).permutation(len(data))[:max_sequences])
        data = data.subset(chosen)
        test_rows, train_rows = split_rows(len(data), [test_fraction], seed)
        self.targets = labels.targets(data).numpy()
        if len(set(self.targets[train_rows])) < 2 or len(set(self.targets[test_rows])) < 2:
            raise DnabertError(f"probe.path={path}: the probe's train or test part holds one class only; raise "
                               "probe.max_sequences or use a file with more examples of each class.")
        self.train_rows, self.test_rows = train_rows, test_rows
        self.data, self.seed, self.batch_size = data, seed, batch_size
        self.tokenize = tokenize or kmer_tokenizer(k)
        self.max_positions = max_positions
        self.name = Path(path).name
        self.loader: torch.utils.data.DataLoader | None = None
        self.last_seconds = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Tokenise once, on global rank 0 (the only rank that probes), for the model's tokens and positions (long
        sequences become windows, as in fine-tuning)."""
        if stage != "fit" or self.loader is not None or (trainer is not None and not trainer.is_global_zero):
            return
        max_positions = self.max_positions or pl_module.model.config.max_position_embeddings
        windows = windowed_set(self.data, torch.from_numpy(self.targets), self.tokenize, max_positions)
        # Its own generator: iterating a DataLoader otherwise draws a seed from torch's global RNG.
        self.loader = torch.utils.data.DataLoader(windows, batch_size=self.batch_size, collate_fn=collate_windows,
                                                  generator=torch.Generator().manual_seed(self.seed))

    def embed(self, pl_module: L.LightningModule) -> np.ndarray:
        """One vector per probe sequence from the model as it is now (eval mode, no gradients)."""
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            features = [mean_pooled_embeddings(model, batch["input_ids"].to(pl_module.device),
                                               batch["sequence_index"].to(pl_module.device),
                                               batch["labels"].shape[0]).cpu()
                        for batch in self.loader]
        finally:
            model.train(was_training)
        return torch.cat(features).numpy().astype(np.float64)

    def score(self, features: np.ndarray) -> dict[str, float]:
        """Fit on the train part, score the test part (standardised features: one regularisation fits all sizes)."""
        train_x, test_x = features[self.train_rows], features[self.test_rows]
        train_y, test_y = self.targets[self.train_rows], self.targets[self.test_rows]
        scaler = StandardScaler().fit(train_x)
        classifier = LogisticRegression(max_iter=1000, random_state=self.seed)
        classifier.fit(scaler.transform(train_x), train_y)
        probabilities = classifier.predict_proba(scaler.transform(test_x))
        predicted = probabilities.argmax(axis=1)
        scores = probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
        return {
            "probe/mcc": float(matthews_corrcoef(test_y, predicted)),
            "probe/auroc": float(roc_auc_score(test_y, scores, multi_class="ovr")),
            "probe/acc": float(accuracy_score(test_y, predicted)),
        }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.loader is None:
            return
        start = time.perf_counter()
        metrics = self.score(self.embed(pl_module))
        self.last_seconds = time.perf_counter() - start
        pl_module.log_dict(metrics, rank_zero_only=True)
        log.debug("probe on %s at step %d: %s (%.2f s)", self.name, trainer.global_step, metrics, self.last_seconds)


class VariantProbe(L.Callback):
    """Zero-shot variant scoring of labelled SNVs at every validation (dnabert.run.variants): the AUROC of
    -score for the variants labelled 1 (expected damaging: they should score low) against those labelled 0, logged
    as `probe/variant_auroc`. Rank 0 only, eval mode, no global RNG; the model's mode is left as found."""

    def __init__(self, vcf: str, reference: str, label: str = "LABEL", max_variants: int = 1000, seed: int = 0,
                 batch_size: int = 64, k: int | None = None, tokenizer_file: str | None = None,
                 max_positions: int = 512) -> None:
        if (k is None) == (tokenizer_file is None):
            raise ValueError("VariantProbe needs exactly one of k and tokenizer_file")
        variants = [variant for variant in read_vcf(vcf) if label in variant.info]
        labels = np.array([variant.info[label] for variant in variants])
        if not len(variants) or not np.isin(labels, ("0", "1")).all() or len(set(labels)) < 2:
            raise DnabertError(f"probe.variants.vcf={vcf}: the probe needs records with INFO {label}=1 (expected "
                               f"damaging) and {label}=0 (neutral), both; set probe.variants.label to the INFO key "
                               "that holds them.")
        chosen = np.sort(np.random.default_rng(seed).permutation(len(variants))[:max_variants])
        self.variants = [variants[index] for index in chosen]
        self.targets = labels[chosen].astype(int)
        self.reference = Reference(reference)
        self.batch_size, self.k, self.tokenizer_file, self.max_positions = batch_size, k, tokenizer_file, max_positions
        self.last_seconds = 0.0

    def score(self, model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        """The AUROC over the scored variants (NaN while they hold one class only); the fraction scored."""
        scorer = VariantScorer(model, self.max_positions, self.k, self.tokenizer_file)
        rows = scorer.score(self.reference, self.variants, batch_size=self.batch_size, device=device)
        scored = np.array([row.score is not None for row in rows])
        scores = -np.array([row.score for row, ok in zip(rows, scored, strict=True) if ok], dtype=np.float64)
        targets = self.targets[scored]
        auroc = float(roc_auc_score(targets, scores)) if len(set(targets)) == 2 else float("nan")
        return {"probe/variant_auroc": auroc, "probe/variant_scored": float(scored.mean())}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        start = time.perf_counter()
        metrics = self.score(pl_module.model, pl_module.device)
        self.last_seconds = time.perf_counter() - start
        pl_module.log_dict(metrics, rank_zero_only=True)
        log.debug("variant probe at step %d: %s (%.2f s)", trainer.global_step, metrics, self.last_seconds)
