"""A transformers tokenizer that takes raw DNA ("ACGTAC...") and yields DNABERT's overlapping k-mer ids.

Why: DNABERT's own tokenizer (BertTokenizer over vocab.txt) needs the sequence pre-split into space-separated
k-mers; this one does the split itself, so `tokenizer(sequence)` works on raw sequences and its ids equal
`dnabert.data.tokenizers.kmer.tokenize(sequence, k)` (the training data path). The vocabulary is the original one
(`dnabert.data.tokenizers.kmer.vocab_tokens`) and is saved as the same vocab.txt, so checkpoints stay interchangeable.

Lower case equals upper case and whitespace inside a sequence is ignored (wrapped FASTA lines). A k-mer with any
other letter (N, IUPAC) becomes [UNK], as BertTokenizer does for an unknown word; a sequence shorter than k has
no k-mers ([CLS] [SEP] only). Decoding gives space-separated k-mers (DNABERT's text format).
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizer

from dnabert.data.tokenizers.kmer import vocab_tokens, write_vocab
from dnabert.data.tokenizers.special import UNK_ID
from dnabert.errors import DnabertError

VOCAB_FILE = "vocab.txt"
MAX_TOKENS = 512  # DNABERT's position embeddings: [CLS] + 510 k-mers + [SEP]


class DnaKmerTokenizer(PreTrainedTokenizer):
    """Raw sequence -> `[CLS]` overlapping k-mers `[SEP]`; padding, truncation and save/load are transformers'."""

    vocab_files_names = {"vocab_file": VOCAB_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]

    def __init__(self, k: int = 6, vocab_file: str | None = None, **kwargs) -> None:
        self.tokens = vocab_tokens(k)
        self.k = k
        if vocab_file is not None:
            saved = Path(vocab_file).read_text(encoding="ascii").splitlines()
            if saved != self.tokens:
                raise DnabertError(
                    f"{vocab_file} is not the DNABERT k={k} vocabulary ({len(saved)} tokens, expected "
                    f"{len(self.tokens)}); load the tokenizer saved with it or set k."
                )
        # The vocabulary must exist before the base class registers the special tokens.
        self.vocab = {token: index for index, token in enumerate(self.tokens)}
        for name, token in (("unk_token", "[UNK]"), ("sep_token", "[SEP]"), ("pad_token", "[PAD]"),
                            ("cls_token", "[CLS]"), ("mask_token", "[MASK]")):
            kwargs.setdefault(name, token)
        kwargs.setdefault("special_tokens_pattern", "cls_sep")
        kwargs.setdefault("model_max_length", MAX_TOKENS)
        super().__init__(k=k, **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def get_vocab(self) -> dict[str, int]:
        return {**self.vocab, **self.added_tokens_encoder}

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        sequence = "".join(text.split()).upper()
        return [sequence[start : start + self.k] for start in range(len(sequence) - self.k + 1)]

    def _convert_token_to_id(self, token: str) -> int:
        return self.vocab.get(token, UNK_ID)

    def _convert_id_to_token(self, index: int) -> str:
        return self.tokens[index]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = f"{filename_prefix}-{VOCAB_FILE}" if filename_prefix else VOCAB_FILE
        return (str(write_vocab(self.k, Path(save_directory) / name)),)
