"""Zero-shot variant effects from a masked language model: log P(alt) - log P(ref) at an SNV, its tokens masked.

For each SNV the reference context around it is read from the FASTA (the model's positions' worth, the variant in
the middle; near a contig end the window slides inward so the variant is off-centre; a contig shorter than the
window is read whole), tokenised, and the tokens that contain the variant's base are replaced by [MASK]. Those
tokens' predictions give a distribution over the four bases at the position; the score is the log-likelihood
ratio of the alternative base against the reference base. Negative: the model finds the alternative less likely
than the reference. The masked input is the same for both alleles (every token that holds the base is masked),
so one forward pass per variant (and strand) scores it.

- k-mer tokens: all tokens covering the base (k of them away from the window's ends) are masked. Token j predicts
  a distribution over the 4^k k-mers (a softmax over the k-mer ids only, the five special tokens excluded); the
  base's probability from token j is the sum over k-mers whose letter at the base's offset in token j is b. The
  score averages the k tokens' log-likelihood ratios (the log of a product of experts, a geometric mean: each
  token is an equal, overlapping view of one base; the sum would count the base k times, the log of the mean
  would let the most confident token decide). A base's probability under this pooling is exp(mean log P_j(b))
  renormalised over the four bases; the normaliser cancels in the ratio.
- BPE tokens: the one token holding the base is masked (tokens of the reference sequence; they never overlap).
  Its prediction is restricted to vocabulary tokens of the same length made of A/C/G/T, renormalised, and the
  base's probability is the sum over those whose letter at the base's offset is b. The masked token hides all
  of its letters, so this is the marginal of the base given the visible context and the token's length.
- With `reverse_complement`, the same is computed on the reverse complement of the context (complemented
  alleles) and the two scores are averaged.

A record that cannot be scored keeps its row with a `status` saying why (STATUSES) and no score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dnabert.data.genome import Reference
from dnabert.data.tokenizers.bpe import BpeWindowTokenizer
from dnabert.data.tokenizers.kmer import INVALID_CODE, NUCLEOTIDES, encode_nucleotides, kmer_ids_from_codes
from dnabert.data.tokenizers.special import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS, PAD_ID, SEP_ID
from dnabert.data.vcf import Variant
from dnabert.errors import DnabertError

SCORED = "scored"
# Why a record has no score: the status column's values, in the order they are checked.
STATUSES = {
    SCORED: "scored",
    "multi_allelic": "ALT lists several alleles; split them first (bcftools norm -m -any)",
    "not_snv": "REF or ALT is not one base (an indel or an MNV)",
    "symbolic": "REF or ALT is not A, C, G or T (a symbolic allele such as <DEL>, *, N, or no ALT)",
    "unknown_contig": "the FASTA has no contig of that name",
    "outside_contig": "POS is past the contig's end",
    "reference_mismatch": "REF is not the FASTA's base at POS",
    "n_in_context": "the context read around the variant holds N or another letter that is not A/C/G/T",
    "short_contig": "the contig is shorter than one token (k bp)",
    "allele_not_in_vocabulary": "no vocabulary token of the masked token's length has REF or ALT at that offset",
}


@dataclass(frozen=True)
class VariantScore:
    """One row of the output: the record, its score (None unless scored), its status and a detail."""

    variant: Variant
    score: float | None
    status: str
    note: str = ""


@dataclass(frozen=True)
class Site:
    """A scoreable SNV on one strand: the context's codes, the variant's index in it, the alleles' codes."""

    codes: np.ndarray
    index: int
    ref: int
    alt: int

    def reverse_complement(self) -> Site:
        complement = np.where(self.codes < 4, self.codes ^ 1, self.codes)[::-1].copy()
        return Site(complement, len(self.codes) - 1 - self.index, self.ref ^ 1, self.alt ^ 1)


@dataclass(frozen=True)
class Masked:
    """A tokenised context: ids with [CLS]/[SEP], the masked positions (sorted), and what the tokenizer's
    `base_log_probs` needs to turn their predictions into base probabilities."""

    ids: np.ndarray
    positions: np.ndarray
    detail: tuple


def odd(n: int) -> int:
    """The largest odd number <= n: a context of 2h+1 bp has the variant exactly in the middle, so a context and
    its reverse complement are mirror images."""
    return n if n % 2 else n - 1


class KmerSites:
    """Overlapping k-mers: every token containing the base is masked."""

    def __init__(self, k: int, tokens: int) -> None:
        self.k = k
        self.context_bp = odd(tokens + k - 1)

    def mask(self, site: Site) -> Masked | str:
        if len(site.codes) < self.k:
            return "short_contig"
        ids = kmer_ids_from_codes(site.codes, self.k)
        first, last = max(0, site.index - self.k + 1), min(site.index, len(ids) - 1)
        tokens = np.arange(first, last + 1)
        full = np.concatenate(([CLS_ID], ids, [SEP_ID]))
        return Masked(full, tokens + 1, tuple((site.index - tokens).tolist()))

    def base_log_probs(self, logits: torch.Tensor, offsets: Sequence[int]) -> torch.Tensor:
        """(n, 4) log P_j(b): each row's k-mer distribution summed over the k-mers with b at its offset."""
        k = self.k
        kmer_log_probs = logits[:, NUM_SPECIAL_TOKENS:NUM_SPECIAL_TOKENS + 4**k].float().log_softmax(-1)
        out = torch.empty(len(offsets), 4, device=logits.device)
        offsets_tensor = torch.tensor(offsets, device=logits.device)
        for offset in set(offsets):
            rows = offsets_tensor == offset
            # k-mer id - 5 is a base-4 number, first letter most significant: the letter at `offset` is one axis.
            by_letter = kmer_log_probs[rows].view(-1, 4**offset, 4, 4 ** (k - 1 - offset))
            out[rows] = by_letter.logsumexp(dim=(1, 3))
        return out


class BpeSites:
    """BPE tokens of the reference context: the one token containing the base is masked."""

    def __init__(self, tokenizer_file: str, tokens: int) -> None:
        self.tokenizer = BpeWindowTokenizer(tokenizer_file).tokenizer
        self.tokens = tokens
        vocabulary = self.tokenizer.get_vocab()
        dna = {token: index for token, index in vocabulary.items()
               if index >= NUM_SPECIAL_TOKENS and token and set(token) <= set(NUCLEOTIDES)}
        self.longest = max(map(len, dna))
        # per token length: the ids of the A/C/G/T tokens of that length and their letters' codes (n, length)
        self.by_length: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for length in sorted({len(token) for token in dna}):
            chosen = [(index, token) for token, index in dna.items() if len(token) == length]
            ids = torch.tensor([index for index, _ in chosen])
            letters = torch.from_numpy(encode_nucleotides("".join(token for _, token in chosen)).astype(np.int64))
            self.by_length[length] = (ids, letters.view(len(chosen), length))
        # enough bp for `tokens` tokens even if every one were the longest (the context is then cut to tokens)
        self.context_bp = odd(tokens * self.longest)

    def mask(self, site: Site) -> Masked | str:
        letters = np.frombuffer(NUCLEOTIDES.encode(), dtype=np.uint8)[np.minimum(site.codes, 3)]
        text = np.where(site.codes < 4, letters, ord("N")).tobytes().decode("ascii")
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        spans = encoding.offsets
        covering = next(i for i, (start, end) in enumerate(spans) if start <= site.index < end)
        first = max(0, min(covering - (self.tokens - 1) // 2, len(spans) - self.tokens))
        last = min(len(spans), first + self.tokens)
        if (site.codes[spans[first][0]:spans[last - 1][1]] == INVALID_CODE).any():
            return "n_in_context"
        start, end = spans[covering]
        ids = np.array([CLS_ID, *encoding.ids[first:last], SEP_ID])
        return Masked(ids, np.array([covering - first + 1]), ((end - start, site.index - start),))

    def base_log_probs(self, logits: torch.Tensor, details: Sequence[tuple[int, int]]) -> torch.Tensor:
        """(n, 4) log P(b): each row's distribution over same-length A/C/G/T tokens, summed by the letter at the
        offset (-inf where no token of that length has b there)."""
        out = torch.full((len(details), 4), -math.inf, device=logits.device)
        for row, (length, offset) in enumerate(details):
            ids, letters = self.by_length.get(length, (None, None))
            if ids is None:
                continue
            log_probs = logits[row, ids.to(logits.device)].float().log_softmax(-1)
            letter = letters[:, offset].to(logits.device)
            for base in range(4):
                if (letter == base).any():
                    out[row, base] = log_probs[letter == base].logsumexp(0)
        return out


class VariantScorer:
    """Scores SNVs with a masked-LM model (MLM head included) and its tokenisation (k-mers of k, or a BPE file)."""

    def __init__(self, model: torch.nn.Module, positions: int, k: int | None = None,
                 tokenizer_file: str | None = None) -> None:
        if positions < 3:
            raise DnabertError(f"max positions {positions} leave no room for a token between [CLS] and [SEP]; "
                               "use at least 3.")
        self.model = model
        self.sites: KmerSites | BpeSites = (KmerSites(k, positions - 2) if k is not None
                                            else BpeSites(str(tokenizer_file), positions - 2))

    def site(self, variant: Variant, reference: Reference) -> Site | tuple[str, str]:
        """The variant's forward-strand context, or (status, note) when it cannot be scored."""
        if "," in variant.alt:
            return "multi_allelic", ""
        if any(not allele or set(allele) - set(NUCLEOTIDES) for allele in (variant.ref, variant.alt)):
            return "symbolic", ""
        if len(variant.ref) != 1 or len(variant.alt) != 1:
            return "not_snv", ""
        length = reference.lengths.get(variant.chrom)
        if length is None:
            return "unknown_contig", ""
        position = variant.pos - 1
        if position >= length:
            return "outside_contig", f"contig length {length}"
        width = self.sites.context_bp
        start = 0 if length <= width else min(max(position - width // 2, 0), length - width)
        codes = reference.codes(variant.chrom, start, min(start + width, length))
        fasta_base = int(codes[position - start])
        ref, alt = (NUCLEOTIDES.index(base) for base in (variant.ref, variant.alt))
        if fasta_base != ref:
            letter = NUCLEOTIDES[fasta_base] if fasta_base < 4 else "N"
            return "reference_mismatch", f"FASTA has {letter}"
        if isinstance(self.sites, KmerSites) and (codes == INVALID_CODE).any():
            return "n_in_context", ""
        return Site(codes, position - start, ref, alt)

    @torch.inference_mode()
    def log_likelihood_ratios(self, sites: Sequence[Site], device: torch.device) -> list[float | str]:
        """log P(alt) - log P(ref) of each site on its strand (one forward pass for the batch), or a status."""
        masked = [self.sites.mask(site) for site in sites]
        usable = [index for index, item in enumerate(masked) if isinstance(item, Masked)]
        results: list[float | str] = list(masked)
        if not usable:
            return results
        width = max(len(masked[index].ids) for index in usable)
        input_ids = torch.full((len(usable), width), PAD_ID, dtype=torch.long)
        where = torch.zeros((len(usable), width), dtype=torch.bool)
        for row, index in enumerate(usable):
            input_ids[row, :len(masked[index].ids)] = torch.from_numpy(masked[index].ids)
            where[row, torch.from_numpy(masked[index].positions)] = True
        input_ids = torch.where(where, MASK_ID, input_ids).to(device)
        logits = self.model(input_ids, attention_mask=(input_ids != PAD_ID).long(), masked_positions=where.to(device))
        details = [detail for index in usable for detail in masked[index].detail]
        base_log_probs = self.sites.base_log_probs(logits, details).cpu()
        first = 0
        for index in usable:
            count = len(masked[index].positions)
            rows = base_log_probs[first:first + count]
            first += count
            ratio = float((rows[:, sites[index].alt] - rows[:, sites[index].ref]).mean())
            results[index] = ratio if math.isfinite(ratio) else "allele_not_in_vocabulary"
        return results

    def score(self, reference: Reference, variants: Sequence[Variant], reverse_complement: bool = False,
              batch_size: int = 64, device: torch.device | str = "cpu",
              progress: Callable[[int], None] | None = None) -> list[VariantScore]:
        """One VariantScore per record, in order. The model's mode is left as found (eval while scoring)."""
        device = torch.device(device)
        was_training = self.model.training
        self.model.to(device).eval()
        rows: list[VariantScore] = []
        try:
            for first in range(0, len(variants), batch_size):
                batch = variants[first:first + batch_size]
                sites = [self.site(variant, reference) for variant in batch]
                scoreable = [site for site in sites if isinstance(site, Site)]
                strands = [self.log_likelihood_ratios(scoreable, device)]
                if reverse_complement:
                    strands.append(self.log_likelihood_ratios([site.reverse_complement() for site in scoreable],
                                                              device))
                per_site = iter(zip(*strands, strict=True))
                for variant, site in zip(batch, sites, strict=True):
                    if not isinstance(site, Site):
                        rows.append(VariantScore(variant, None, *site))
                        continue
                    values = next(per_site)
                    reasons = [value for value in values if isinstance(value, str)]
                    rows.append(VariantScore(variant, None, reasons[0]) if reasons
                                else VariantScore(variant, sum(values) / len(values), SCORED))
                if progress is not None:
                    progress(len(batch))
        finally:
            self.model.train(was_training)
        return rows
