"""DNABERT export/import (dnabert.models.dnabert.interop; checkpoints and the CLI: dnabert.tools.export): directories
that transformers / MultiMolecule load with our logits, checkpoints, import."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from dnabert.data.tokenizers.kmer import kmer_text, tokenize, vocab_tokens
from dnabert.data.tokenizers.special import PAD_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert.interop import export_model, init_from, load_pretrained_into, multimolecule_rows
from dnabert.models.dnabert.model import DnaBertConfig, DnaBertForMaskedLM
from dnabert.tools.export import export_checkpoint, main

K = 3
TINY = dict(vocab_size=69, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
SEQUENCES = ("ACGTACGGTTACAGATTACA", "TTGACCA", "GATTACAGATTACAC")
# The original DNABERT vocab_3.txt begins like this (ATCG product order, not alphabetical).
ORIGINAL_VOCAB_HEAD = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "AAA", "AAT", "AAC", "AAG", "ATA"]


@pytest.fixture(scope="module")
def model() -> DnaBertForMaskedLM:
    torch.manual_seed(0)
    trained_like = DnaBertForMaskedLM(DnaBertConfig(**TINY)).eval()
    with torch.no_grad():  # non-zero biases, so that a lost or misplaced bias shows up in the logits
        trained_like.cls.predictions.bias.normal_(std=0.5)
    return trained_like


def padded_ids(sequences=SEQUENCES) -> torch.Tensor:
    rows = [torch.from_numpy(tokenize(sequence, K)) for sequence in sequences]
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=PAD_ID)


def lightning_checkpoint(model: DnaBertForMaskedLM, path, hyper_parameters=None) -> None:
    """What the LightningModule saves: the model as attribute `model`, compiled, plus hyper-parameters."""
    state_dict = {f"model._orig_mod.{key}": value for key, value in model.state_dict().items()}
    state_dict["masking.some_buffer"] = torch.zeros(2)  # other module state is not part of the export
    if hyper_parameters is None:
        hyper_parameters = {"k": K, "model_config": model.config.to_dict(), "train_config": {"peak_lr": 4e-4}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "hyper_parameters": hyper_parameters, "global_step": 1200}, path)


def assert_transformers_logits_equal(model: DnaBertForMaskedLM, directory) -> None:
    loaded, info = transformers.BertForMaskedLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    input_ids = padded_ids()
    real = input_ids != PAD_ID
    with torch.no_grad():
        theirs = loaded.eval()(input_ids=input_ids, attention_mask=real.long()).logits
        ours = model(input_ids)
    assert (theirs - ours)[real].abs().max() <= 1e-4


def test_original_layout_loads_in_transformers_with_our_logits(model, tmp_path):
    out_dir = export_model(model, K, tmp_path / "export", card_config={"peak_lr": 4e-4, "max_steps": 120000})
    assert_transformers_logits_equal(model, out_dir)
    vocab = (out_dir / "vocab.txt").read_text().split("\n")
    assert vocab[:10] == ORIGINAL_VOCAB_HEAD and vocab[68] == "GGG" and len(vocab_tokens(K)) == 69
    tokenizer = transformers.BertTokenizer.from_pretrained(out_dir)
    assert tokenizer.convert_ids_to_tokens(list(range(69))) == vocab_tokens(K)
    sequence = "GATTACAGATTACAC"
    assert tokenizer(kmer_text(sequence, K))["input_ids"] == tokenize(sequence, K).tolist()
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["do_lower_case"] is False
    assert json.loads((out_dir / "special_tokens_map.json").read_text())["mask_token"] == "[MASK]"
    card = (out_dir / "README.md").read_text()
    assert '"max_steps": 120000' in card and '"hidden_size": 64' in card


def test_fill_mask_pipeline_on_original_layout(model, tmp_path):
    out_dir = export_model(model, K, tmp_path / "export")
    unmasker = transformers.pipeline("fill-mask", model=str(out_dir))
    predictions = unmasker("ACG CGT [MASK] TAC")
    input_ids = torch.tensor([tokenize("ACGTAC", K).tolist()])
    input_ids[0, 3] = 4  # [MASK]
    with torch.no_grad():
        best = model(input_ids)[0, 3].argmax().item()
    assert predictions[0]["token_str"] == vocab_tokens(K)[best]


def test_checkpoint_and_run_dir_export(model, tmp_path, capsys):
    run_dir = tmp_path / "run"
    lightning_checkpoint(model, run_dir / "checkpoints" / "last.ckpt")
    assert main([str(run_dir), str(tmp_path / "from_cli")]) == 0
    assert_transformers_logits_equal(model, tmp_path / "from_cli")
    card = (tmp_path / "from_cli" / "README.md").read_text()
    assert '"peak_lr": 0.0004' in card and '"global_step": 1200' in card
    # a second export over the first one replaces it
    export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "from_cli")
    assert_transformers_logits_equal(model, tmp_path / "from_cli")


def test_checkpoint_with_omegaconf_hyper_parameters(model, tmp_path):
    """Hyper-parameters taken from a Hydra config arrive as OmegaConf containers."""
    hyper_parameters = OmegaConf.create(
        {"k": K, "model_config": model.config.to_dict(), "train_config": {"optim": {"betas": [0.9, 0.98]}}}
    )
    lightning_checkpoint(model, tmp_path / "hydra.ckpt", hyper_parameters=hyper_parameters)
    out_dir = export_checkpoint(tmp_path / "hydra.ckpt", tmp_path / "out")
    assert_transformers_logits_equal(model, out_dir)
    card = (out_dir / "README.md").read_text()
    assert '"betas": [\n' in card


def test_bad_checkpoints_are_clear_errors(model, tmp_path, capsys):
    assert main([str(tmp_path / "typo.ckpt"), str(tmp_path / "out")]) == 2
    assert "typo.ckpt does not exist" in capsys.readouterr().err
    (tmp_path / "run_without_checkpoint").mkdir()
    with pytest.raises(DnabertError, match="checkpoints/last.ckpt does not exist"):
        export_checkpoint(tmp_path / "run_without_checkpoint", tmp_path / "out")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(DnabertError, match="Cannot read checkpoint"):
        export_checkpoint(tmp_path / "garbage.ckpt", tmp_path / "out")
    lightning_checkpoint(model, tmp_path / "no_k.ckpt", hyper_parameters={"model_config": model.config.to_dict()})
    with pytest.raises(DnabertError, match=r"\['k'\]"):
        export_checkpoint(tmp_path / "no_k.ckpt", tmp_path / "out")
    wrong_size = {"k": K, "model_config": {**model.config.to_dict(), "intermediate_size": 96}}
    lightning_checkpoint(model, tmp_path / "wrong.ckpt", hyper_parameters=wrong_size)
    with pytest.raises(DnabertError, match="do not fit"):
        export_checkpoint(tmp_path / "wrong.ckpt", tmp_path / "out")


class _RunsCodeWhenUnpickled:
    """A checkpoint from an untrusted source may carry this: unpickling it would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_unrun(model, tmp_path):
    marker = tmp_path / "code_ran"
    hyper_parameters = {"k": K, "model_config": model.config.to_dict(), "payload": _RunsCodeWhenUnpickled(marker)}
    lightning_checkpoint(model, tmp_path / "evil.ckpt", hyper_parameters=hyper_parameters)
    with pytest.raises(DnabertError, match="Cannot read checkpoint"):
        export_checkpoint(tmp_path / "evil.ckpt", tmp_path / "out")
    assert not marker.exists()


def test_export_of_a_compiled_model_has_plain_keys(model, tmp_path):
    out_dir = export_model(torch.compile(model), K, tmp_path / "compiled")  # compiles nothing until called
    assert_transformers_logits_equal(model, out_dir)


def test_export_refuses_wrong_k_and_foreign_directories(model, tmp_path):
    with pytest.raises(DnabertError, match="k=4 needs 261"):
        export_model(model, 4, tmp_path / "out")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    with pytest.raises(DnabertError, match="not an earlier export"):
        export_model(model, K, foreign)
    assert (foreign / "chapter1.tex").read_text() == "precious"


def test_multimolecule_layout_loads_with_the_same_kmer_logits(model, tmp_path):
    multimolecule = pytest.importorskip("multimolecule")
    out_dir = export_model(model, K, tmp_path / "mm", layout="multimolecule")
    loaded, info = multimolecule.DnaBertForMaskedLM.from_pretrained(out_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == "dnabert" and config["vocab_size"] == 70
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "DnaTokenizer" and tokenizer_config["nmers"] == K

    tokenizer = transformers.AutoTokenizer.from_pretrained(out_dir)
    mm_tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert mm_tokens[:8] == ["<pad>", "<cls>", "<eos>", "<unk>", "<mask>", "<null>", "AAA", "AAC"]
    sequence = "GATTACAGATTACAC"
    mm_ids = tokenizer(sequence)["input_ids"]
    ours_ids = tokenize(sequence, K)
    assert len(mm_ids) == len(ours_ids)  # k-mer tokenisation, not single letters
    assert tokenizer.convert_ids_to_tokens(mm_ids)[1:-1] == kmer_text(sequence, K).split()

    rows = multimolecule_rows(mm_tokens, K)
    with torch.no_grad():
        theirs = loaded.eval()(input_ids=torch.tensor([mm_ids])).logits[0]
        ours = model(torch.from_numpy(ours_ids)[None])[0]
    # same k-mers in, same scores out, columns permuted into MultiMolecule's order
    assert (theirs - ours[:, rows]).abs().max() <= 1e-4
    embeddings = loaded.model.embeddings.word_embeddings.weight
    assert torch.equal(embeddings[mm_tokens.index("<null>")], embeddings[mm_tokens.index("<unk>")])

    unmasker = transformers.pipeline("fill-mask", model=str(out_dir))
    predictions = unmasker("ACGT<mask>ACGT")  # ACG CGT <mask> ACG CGT
    same_input = torch.tensor([[2, *tokenize("ACGT", K, add_special_tokens=False), 4, *tokenize("ACGT", K, False), 3]])
    with torch.no_grad():
        best = model(same_input)[0, 3].argmax().item()
    assert predictions[0]["token_str"] == vocab_tokens(K)[best]


def test_multimolecule_rows_map_kmers_by_name():
    tokens = ["<pad>", "<cls>", "<eos>", "<unk>", "<mask>", "<null>", "AAA", "AAC", "GGG"]
    assert multimolecule_rows(tokens, K).tolist() == [0, 2, 3, 1, 4, 1, 5, 7, 68]
    with pytest.raises(DnabertError, match="NNN"):
        multimolecule_rows(["NNN"], K)


def save_transformers_dir(tmp_path, vocab_size: int, with_vocab: bool = True):
    torch.manual_seed(3)
    config = DnaBertConfig(**{**TINY, "vocab_size": vocab_size}).to_hf_config()
    reference = transformers.BertForMaskedLM(config).eval()
    directory = tmp_path / f"released_{vocab_size}"
    reference.save_pretrained(directory)
    if with_vocab:
        (directory / "vocab.txt").write_text("\n".join(vocab_tokens(K)) + "\n")
    return reference, directory


def test_init_from_a_transformers_directory(tmp_path):
    reference, directory = save_transformers_dir(tmp_path, 69)
    model = init_from(directory, K).eval()
    input_ids = padded_ids()
    real = input_ids != PAD_ID
    with torch.no_grad():
        expected = reference(input_ids=input_ids, attention_mask=real.long()).logits
        assert (model(input_ids) - expected)[real].abs().max() <= 1e-4
    fresh = DnaBertForMaskedLM(DnaBertConfig(**TINY))
    load_pretrained_into(fresh, directory, K)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in model.state_dict().items())
    assert fresh.cls.predictions.decoder.weight is fresh.bert.embeddings.word_embeddings.weight


def test_init_from_rejects_wrong_k_and_missing_files(tmp_path):
    _, directory = save_transformers_dir(tmp_path, 4101, with_vocab=False)
    with pytest.raises(DnabertError, match="4101 vocabulary rows but k=5 needs 1029"):
        init_from(directory, 5)
    _, with_vocab = save_transformers_dir(tmp_path, 69)
    with pytest.raises(DnabertError, match="not the DNABERT vocabulary for k=4"):
        init_from(with_vocab, 4)
    with pytest.raises(DnabertError, match="no config.json"):
        init_from(tmp_path / "nowhere", K)
    other_size = DnaBertForMaskedLM(DnaBertConfig(**{**TINY, "hidden_size": 32}))
    with pytest.raises(DnabertError, match="do not fit"):
        load_pretrained_into(other_size, with_vocab, K)


def test_run_continues_from_an_original_layout_export(compose_config, tmp_path):
    """`model.init_from` of a DNABERT run loads the family's original layout (run.training imports the loader
    only then)."""
    from dnabert.run.training import build_module, make_plan

    settings = ("model=tiny", f"tokenizer.k={K}")
    cfg = compose_config(*settings)
    exported = build_module(cfg, make_plan(cfg)).model
    with torch.no_grad():  # not the weights a fresh run of the same seed starts from
        for parameter in exported.parameters():
            parameter.add_(torch.randn_like(parameter))
    export_model(exported, K, tmp_path / "hf_model")
    cfg = compose_config(*settings, f"model.init_from='{tmp_path / 'hf_model'}'")
    continued = build_module(cfg, make_plan(cfg)).model
    assert exported.state_dict().keys() == continued.state_dict().keys()
    assert all(torch.equal(value, continued.state_dict()[key]) for key, value in exported.state_dict().items())
