"""Does zero-shot variant scoring see what pretraining learnt? A genome with a planted motif, per seed.

A random 20 kb genome with one fixed 10 bp motif planted at 500 places (no overlaps, 25% of the bases); a tiny
BERT over 3-mers pretrained on it in-process (1,000 AdamW steps of 32 windows of 32 tokens, whole-k-mer masking at
30%); 100 SNVs inside motifs (they break it) and 100 in the background, each to a random other base, scored with
`python -m dnabert.tools.score_variants`. Motif-breaking SNVs should get the lower log P(alt) - log P(ref): the
AUROC of -score against "breaks the motif" is printed per seed (tests/test_variants.py asserts seed 0's).

    python -m benchmarks.variant_motif --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from dnabert.data.masking import mask_batch
from dnabert.data.tokenizers.kmer import encode_nucleotides, kmer_ids_from_codes, vocab_size
from dnabert.data.tokenizers.special import CLS_ID, SEP_ID
from dnabert.models import DEFAULT_FAMILY, get_family
from dnabert.models.components import IGNORE_INDEX, masked_lm_loss
from dnabert.tools.score_variants import main as score_variants

GENOME_BP, MOTIF_BP, MOTIFS = 20_000, 10, 500
K, POSITIONS, STEPS = 3, 32, 1000
VCF_HEADER = "##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


def motif_genome(seed: int) -> tuple[str, np.ndarray]:
    """The sequence and which of its bases lie in a planted motif."""
    rng = np.random.default_rng(seed)
    letters = rng.choice(list("ACGT"), GENOME_BP)
    motif = rng.choice(list("ACGT"), MOTIF_BP)
    starts = rng.choice(np.arange(0, GENOME_BP - MOTIF_BP, MOTIF_BP + 2), MOTIFS, replace=False)
    in_motif = np.zeros(GENOME_BP, dtype=bool)
    for start in starts:
        letters[start:start + MOTIF_BP] = motif
        in_motif[start:start + MOTIF_BP] = True
    return "".join(letters), in_motif


def pretrain_on(sequence: str, seed: int, steps: int = STEPS) -> torch.nn.Module:
    """A tiny BERT (1 layer, hidden 32) pretrained on random windows of the sequence; eval mode."""
    torch.manual_seed(seed)
    model = get_family(DEFAULT_FAMILY).build(dict(
        vocab_size=vocab_size(K), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=POSITIONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    codes, width = encode_nucleotides(sequence), POSITIONS - 2 + K - 1
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(sequence) - width, 32)
        kmers = kmer_ids_from_codes(codes[starts[:, None] + np.arange(width)], K)
        ids = torch.from_numpy(np.pad(kmers, ((0, 0), (1, 0)), constant_values=CLS_ID))
        ids = torch.nn.functional.pad(ids, (0, 1), value=SEP_ID)
        masked, labels = mask_batch(ids, K, 0.3, generator)
        where = labels != IGNORE_INDEX
        loss = masked_lm_loss(model(masked, masked_positions=where), labels[where])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def write_inputs(sequence: str, in_motif: np.ndarray, seed: int, directory: Path) -> tuple[Path, Path]:
    """motif.fa and motif.vcf: 100 SNVs in motifs (INFO LABEL=1), 100 in the background (LABEL=0)."""
    fasta = directory / "motif.fa"
    fasta.write_text(">chrS\n" + "".join(sequence[i:i + 60] + "\n" for i in range(0, len(sequence), 60)))
    rng = np.random.default_rng(seed + 1)
    lines = []
    for label, pool in ((1, np.flatnonzero(in_motif)), (0, np.flatnonzero(~in_motif))):
        for position in np.sort(rng.choice(pool, 100, replace=False)):
            ref = sequence[position]
            alt = str(rng.choice([base for base in "ACGT" if base != ref]))
            lines.append(f"chrS\t{position + 1}\tv{position}\t{ref}\t{alt}\t.\t.\tLABEL={label}\n")
    vcf = directory / "motif.vcf"
    vcf.write_text(VCF_HEADER + "".join(lines))
    return fasta, vcf


def motif_auroc(seed: int, directory: Path, extra: tuple[str, ...] = ()) -> float:
    """Pretrain, export, score with the command line; the AUROC of -score for motif-breaking SNVs."""
    sequence, in_motif = motif_genome(seed)
    model = pretrain_on(sequence, seed)
    exported = get_family(DEFAULT_FAMILY).export(model, directory / "hf_model", None, K, None, None)
    fasta, vcf = write_inputs(sequence, in_motif, seed, directory)
    if score_variants([str(exported), str(fasta), str(vcf), str(directory / "scores.tsv"), *extra]) != 0:
        raise SystemExit(2)
    table = pd.read_csv(directory / "scores.tsv", sep="\t")
    labels = [int(line.rsplit("LABEL=", 1)[1]) for line in vcf.read_text().splitlines() if "LABEL=" in line]
    return float(roc_auc_score(labels, -table["score"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.variant_motif", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--reverse-complement", action="store_true", help="score both strands")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: one thread is fastest, and steady on a shared machine
    extra = ("--reverse-complement",) if args.reverse_complement else ()
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as directory:
            print(f"seed {seed}: AUROC {motif_auroc(seed, Path(directory), extra):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
