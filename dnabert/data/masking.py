"""Whole-k-mer masking for the MLM objective (token-level masking for BPE), and the 15% -> 20% rate schedule.

Overlapping k-mers share nucleotides: a lone masked k-mer can be read off its neighbours. So masking works
on nucleotides ("whole_kmer" mode): hidden nucleotides are drawn i.i.d. with p = 1-(1-rate)^(1/k) and a token
is masked iff any of its k nucleotides is hidden. Every k-mer token is then masked with probability exactly
`rate` (sequence edges included, any k, any length), and a hidden nucleotide masks every k-mer containing it.

Rows may hold several windows one after another (`[CLS] k-mers [SEP] [CLS] k-mers [SEP] [PAD]...`, packed
rows). Token t gets the nucleotide slot s(t) = t + (k-1) * (number of [CLS] at or before t); each window's
tokens then cover a slot range disjoint from every other window's, so a hidden nucleotide never spans windows,
and no extra input (window lengths) is needed.

"original" mode reproduces the original DNABERT code instead: span centres drawn Bernoulli(`rate`) over
the real tokens, each expanded to k consecutive tokens and clipped to its window. There `rate` is a CENTRE
rate (the original `mlm_probability`), so about 1-(1-rate)^k of the tokens are masked;
`centre_rate_for(0.15, k)` gives the centre rate that masks 15%. It also replaces as the original code did:
[MASK] with probability 0.8, else a random id with probability 0.5, drawn from the WHOLE vocabulary (special
tokens and the original id included), with the same draws in the same order (Bernoulli centres, Bernoulli
[MASK], Bernoulli random, uniform ids), so on one generator it gives the original's masks exactly.
"whole_kmer" mode replaces as the model card says: 80% [MASK], 10% a random k-mer different from the
original (never a special token), 10% unchanged.

"token" mode is for tokens that do not overlap (BPE, DNABERT-2): every real token is masked independently with
probability `rate`, and the random replacement is drawn among all non-special ids of the vocabulary
(`vocab_size`).

Everything is vectorised torch on the tensor's device (masking runs after the batch reaches the GPU, so it
can read the optimiser step); the only Python loop is over the k span offsets of "original" mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dnabert.data.tokenizers.kmer import check_k
from dnabert.data.tokenizers.kmer import vocab_size as kmer_vocab_size  # mask_batch's `vocab_size` is an argument
from dnabert.data.tokenizers.special import CLS_ID, MASK_ID, NUM_SPECIAL_TOKENS
from dnabert.errors import DnabertError

IGNORE_INDEX = -100  # the label of unmasked positions: ignored by torch.nn.functional.cross_entropy
MASKING_MODES = ("whole_kmer", "original", "token")


def _check_fraction(value: float, setting: str, *, closed: bool = False) -> float:
    """Validate a probability-like setting; the error names the setting so the user finds it in the config."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not ((0 <= value <= 1) if closed else (0 < value < 1)):
        interval = "[0, 1]" if closed else "(0, 1)"
        raise DnabertError(f"{setting}={value!r} is not a number in {interval}; fix it in the config.")
    return float(value)


@dataclass(frozen=True)
class MaskSchedule:
    """Masking rate by optimiser step: `rate` before `switch_step`, `final_rate` from it on (None: never).

    DNABERT masked 15% for the first 100k steps and 20% for the last 20k.
    """

    rate: float = 0.15
    final_rate: float = 0.20
    switch_step: int | None = None

    def __post_init__(self) -> None:
        _check_fraction(self.rate, "masking.rate")
        _check_fraction(self.final_rate, "masking.final_rate")
        if self.switch_step is not None and (
            isinstance(self.switch_step, bool) or not isinstance(self.switch_step, int) or self.switch_step < 0
        ):
            raise DnabertError(
                f"masking.switch_step={self.switch_step!r} must be a step count >= 0 (or null: never switch)."
            )

    def rate_at(self, step: int) -> float:
        """The rate for optimiser step `step` (Lightning's global_step)."""
        if self.switch_step is None or step < self.switch_step:
            return self.rate
        return self.final_rate


def centre_rate_for(masked_fraction: float, k: int) -> float:
    """Per-position probability whose k-wide union covers `masked_fraction`: 1-(1-f)^(1/k).

    It is the "original" mode centre rate that masks about f of the interior tokens (0.0267 for 15% at k=6),
    and the hidden-nucleotide probability of "whole_kmer" mode.
    """
    fraction = _check_fraction(masked_fraction, "masking.rate")
    return 1.0 - (1.0 - fraction) ** (1.0 / check_k(k))


def _window_index(input_ids: torch.Tensor) -> torch.Tensor:
    """Per token, the number of [CLS] tokens at or before it: tokens of one packed window share the value."""
    return torch.cumsum(input_ids == CLS_ID, dim=1, dtype=torch.int32)  # int32: the int64 cumsum is slow on CPU


def nucleotide_slots(input_ids: torch.Tensor, k: int) -> torch.Tensor:
    """Slot s(t) of each token's first nucleotide; token t covers slots [s(t), s(t)+k).

    Shifting every window by k-1 slots per [CLS] keeps the slot ranges of different windows disjoint.
    """
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return positions + (check_k(k) - 1) * _window_index(input_ids)


def _check_inputs(input_ids: torch.Tensor, generator: torch.Generator | None) -> None:
    """A (B, T) integer batch and a generator on its device; programming errors, hence ValueError."""
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor (B, T), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if generator is not None and generator.device.type != input_ids.device.type:
        raise ValueError(
            f"the masking generator is on {generator.device} but the batch is on {input_ids.device}; "
            "create the generator on the batch's device."
        )


def whole_kmer_mask_positions(
    input_ids: torch.Tensor, k: int, rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which tokens "whole_kmer" masking hides (bool (B, T)): those with a hidden nucleotide, specials never.

    The draw has a fixed shape (B, T + (k-1)*ceil(T/3) + k), an upper bound on the slots (a window takes at
    least 3 tokens, [CLS] k-mer [SEP], so a row holds at most ceil(T/3) windows, each shifting the slots by
    k-1), so it needs no device-to-host sync and depends only on the batch shape and the generator.
    """
    k = check_k(k)
    hidden_probability = centre_rate_for(rate, k)
    _check_inputs(input_ids, generator)
    batch, length = input_ids.shape
    slots = length + (k - 1) * -(-length // 3) + k
    hidden = torch.rand((batch, slots), generator=generator, device=input_ids.device) < hidden_probability
    # int32: counts stay below the slot count, and an int64 cumsum is about 8x slower on CPU
    hidden_before = torch.nn.functional.pad(torch.cumsum(hidden, dim=1, dtype=torch.int32), (1, 0))
    first_slot = nucleotide_slots(input_ids, k)
    hidden_in_token = hidden_before.gather(1, first_slot + k) - hidden_before.gather(1, first_slot)
    return (hidden_in_token > 0) & (input_ids >= NUM_SPECIAL_TOKENS)


def original_mask_positions(
    input_ids: torch.Tensor, k: int, centre_rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which tokens the original DNABERT masking hides (bool (B, T)).

    Centres are drawn Bernoulli(centre_rate) over real tokens and expanded to the k tokens at offsets
    -(k-1)//2 .. k-1-(k-1)//2 (the original {3:[-1,1], 4:[-1,1,2], 5:[-2,-1,1,2], 6:[-2,-1,1,2,3]} plus the
    centre), clipped to the real tokens of the centre's window.
    """
    k = check_k(k)
    centre_rate = _check_fraction(centre_rate, "masking.rate")
    _check_inputs(input_ids, generator)
    real = input_ids >= NUM_SPECIAL_TOKENS
    window = _window_index(input_ids)
    centres = torch.bernoulli(real * centre_rate, generator=generator).bool()  # the original's draw, p=0 off real
    length = input_ids.shape[1]
    masked = torch.zeros_like(centres)
    first_offset = -((k - 1) // 2)
    for offset in range(first_offset, first_offset + k):
        # token t is covered by the centre at t - offset, if that centre lies in the same window
        if abs(offset) >= length:
            continue
        if offset >= 0:
            covered = centres[:, : length - offset] & (window[:, : length - offset] == window[:, offset:])
            masked[:, offset:] |= covered
        else:
            covered = centres[:, -offset:] & (window[:, -offset:] == window[:, :offset])
            masked[:, :offset] |= covered
    return masked & real


def token_mask_positions(
    input_ids: torch.Tensor, rate: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Which tokens "token" masking hides (bool (B, T)): each real token independently with probability `rate`."""
    rate = _check_fraction(rate, "masking.rate")
    _check_inputs(input_ids, generator)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    return (draw < rate) & (input_ids >= NUM_SPECIAL_TOKENS)


def mask_batch(
    input_ids: torch.Tensor,
    k: int | None,
    rate: float,
    generator: torch.Generator | None = None,
    mode: str = "whole_kmer",
    mask_token_fraction: float = 0.8,
    random_token_fraction: float = 0.1,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask a batch for MLM: returns (masked_ids, labels), both LongTensor (B, T) on the input's device.

    `rate` is the masked fraction in "whole_kmer" and "token" modes and the span-centre rate in "original" mode
    (see the module docstring). Of the masked tokens, `mask_token_fraction` become [MASK],
    `random_token_fraction` a uniformly drawn non-special token different from the original ("original" mode:
    any id of the vocabulary, as the original code drew), the rest stay.
    `vocab_size` bounds that draw (default: the k-mer vocabulary of k; "token" mode needs it, and ignores k).
    labels hold the original id at masked positions and IGNORE_INDEX elsewhere. `input_ids` is not modified.
    """
    if mode == "whole_kmer":
        masked = whole_kmer_mask_positions(input_ids, k, rate, generator)
    elif mode == "original":
        masked = original_mask_positions(input_ids, k, rate, generator)
    elif mode == "token":
        if vocab_size is None:
            raise ValueError("token-level masking needs the vocabulary size (vocab_size=...)")
        masked = token_mask_positions(input_ids, rate, generator)
    else:
        raise DnabertError(f"masking.mode={mode!r} is unknown; choose one of {', '.join(MASKING_MODES)}.")
    mask_token_fraction = _check_fraction(mask_token_fraction, "masking.mask_token_fraction", closed=True)
    random_token_fraction = _check_fraction(random_token_fraction, "masking.random_token_fraction", closed=True)
    if mask_token_fraction + random_token_fraction > 1:
        raise DnabertError(
            "masking.mask_token_fraction + masking.random_token_fraction must not exceed 1 "
            f"(got {mask_token_fraction} + {random_token_fraction})."
        )

    labels = torch.where(masked, input_ids, IGNORE_INDEX)
    num_ids = vocab_size if vocab_size is not None else kmer_vocab_size(k)
    replace = _replace_as_original if mode == "original" else _replace_as_model_card
    to_mask_token, to_random, random_ids = replace(
        input_ids, masked, generator, mask_token_fraction, random_token_fraction, num_ids
    )
    masked_ids = torch.where(to_mask_token, MASK_ID, input_ids)
    masked_ids = torch.where(to_random, random_ids, masked_ids)
    return masked_ids, labels


Replacement = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (to [MASK], to a random id, the random ids)


def _replace_as_model_card(
    input_ids: torch.Tensor, masked: torch.Tensor, generator: torch.Generator | None,
    mask_token_fraction: float, random_token_fraction: float, num_ids: int,
) -> Replacement:
    """One uniform draw splits the masked tokens; the random id is another non-special token, never the original:
    a uniform draw over one id fewer than the non-special ones, shifted past the original id."""
    choice = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask_token = masked & (choice < mask_token_fraction)
    to_random = masked & (choice >= mask_token_fraction) & (choice < mask_token_fraction + random_token_fraction)
    random_ids = NUM_SPECIAL_TOKENS + torch.randint(
        0, num_ids - NUM_SPECIAL_TOKENS - 1, input_ids.shape, generator=generator, device=input_ids.device
    )
    random_ids += (random_ids >= input_ids).long()
    return to_mask_token, to_random, random_ids


def _replace_as_original(
    input_ids: torch.Tensor, masked: torch.Tensor, generator: torch.Generator | None,
    mask_token_fraction: float, random_token_fraction: float, num_ids: int,
) -> Replacement:
    """The original code's three draws, in its order: Bernoulli(mask_token_fraction) for [MASK], then among the
    rest Bernoulli(random_token_fraction / (1 - mask_token_fraction)) (0.1/0.2 = 0.5) for a random id, drawn
    uniformly from all `num_ids` ids: special tokens and the original id included."""
    def bernoulli(probability: float) -> torch.Tensor:
        full = torch.full(input_ids.shape, probability, device=input_ids.device)
        return torch.bernoulli(full, generator=generator).bool()

    to_mask_token = bernoulli(mask_token_fraction) & masked
    rest = 1.0 - mask_token_fraction
    to_random = bernoulli(min(random_token_fraction / rest, 1.0) if rest > 0 else 0.0) & masked & ~to_mask_token
    random_ids = torch.randint(0, num_ids, input_ids.shape, generator=generator, device=input_ids.device)
    return to_mask_token, to_random, random_ids
