"""The special tokens every tokenizer of the project uses, with the same ids: k-mers, BPE and any family's.

Collation, packing, masking and the models rely on these ids whatever the tokenizer; the published DNABERT-2
tokenizer, which numbers them otherwise, is converted to them on import (dnabert.data.tokenizers.bpe).
"""

PAD_ID = 0
UNK_ID = 1
CLS_ID = 2
SEP_ID = 3
MASK_ID = 4
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
NUM_SPECIAL_TOKENS = len(SPECIAL_TOKENS)
