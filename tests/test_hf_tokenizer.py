"""DnaKmerTokenizer: ids equal the training path's tokenizer, the original vocabulary, transformers' padding,
truncation and save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dnabert.data.tokenizers.hf_kmer import DnaKmerTokenizer
from dnabert.data.tokenizers.kmer import tokenize, vocab_text
from dnabert.data.tokenizers.special import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID
from dnabert.errors import DnabertError

RNG = np.random.default_rng(0)
SEQUENCES = ["".join(RNG.choice(list("ACGT"), n)) for n in (6, 7, 40, 300)]


@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_ids_equal_the_training_tokenizer(k):
    tokenizer = DnaKmerTokenizer(k=k)
    assert tokenizer.vocab_size == len(tokenizer) == 4**k + 5
    for sequence in SEQUENCES:
        expected = tokenize(sequence, k).tolist()
        assert tokenizer(sequence)["input_ids"] == expected
        assert tokenizer(sequence.lower())["input_ids"] == expected
        assert tokenizer(sequence, add_special_tokens=False)["input_ids"] == expected[1:-1]


def test_special_tokens_unknown_kmers_and_decoding():
    tokenizer = DnaKmerTokenizer(k=6)
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id) == (PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID)
    assert tokenizer.convert_ids_to_tokens([5, 6, 4100]) == ["AAAAAA", "AAAAAT", "GGGGGG"]  # ATCG product order
    ids = tokenizer("ACGTACN")["input_ids"]  # the k-mer with N is unknown, as in BertTokenizer
    assert ids == [CLS_ID, tokenize("ACGTAC", 6)[1], UNK_ID, SEP_ID]
    assert tokenizer("ACG")["input_ids"] == [CLS_ID, SEP_ID]  # shorter than k: no k-mer
    assert tokenizer("ACGTAC\nGT")["input_ids"] == tokenize("ACGTACGT", 6).tolist()  # wrapped lines
    assert tokenizer.decode(tokenizer("ACGTACGT")["input_ids"], skip_special_tokens=True) == "ACGTAC CGTACG GTACGT"


def test_padding_truncation_and_pairs():
    tokenizer = DnaKmerTokenizer(k=6)
    batch = tokenizer(SEQUENCES[:3], padding=True, return_tensors="pt")
    assert batch["input_ids"].shape == (3, 40 - 6 + 1 + 2)
    assert torch.equal(batch["attention_mask"], (batch["input_ids"] != PAD_ID).long())
    assert batch["input_ids"][0].tolist() == tokenize(SEQUENCES[0], 6).tolist() + [PAD_ID] * 34
    truncated = tokenizer(SEQUENCES[3], truncation=True, max_length=10)["input_ids"]
    assert truncated == tokenize(SEQUENCES[3], 6).tolist()[:9] + [SEP_ID]
    assert len(tokenizer(SEQUENCES[3] * 3, truncation=True)["input_ids"]) == 512  # DNABERT's model_max_length
    pair = tokenizer("ACGTACG", "TTTTTT")
    assert pair["input_ids"] == [CLS_ID, *tokenize("ACGTACG", 6)[1:-1], SEP_ID, *tokenize("TTTTTT", 6)[1:-1], SEP_ID]
    assert pair["token_type_ids"] == [0, 0, 0, 0, 1, 1]


def test_save_and_load_round_trip(tmp_path):
    tokenizer = DnaKmerTokenizer(k=4)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_text() == vocab_text(4)  # the original DNABERT vocab.txt
    loaded = DnaKmerTokenizer.from_pretrained(tmp_path)
    assert loaded.k == 4 and loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded(SEQUENCES[2])["input_ids"] == tokenize(SEQUENCES[2], 4).tolist()
    (tmp_path / "vocab.txt").write_text(vocab_text(3))
    with pytest.raises(DnabertError, match=r"vocab\.txt is not the DNABERT k=4 vocabulary"):
        DnaKmerTokenizer.from_pretrained(tmp_path)


def test_unsupported_k_is_refused():
    with pytest.raises(DnabertError, match="k=7"):
        DnaKmerTokenizer(k=7)
