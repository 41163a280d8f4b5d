"""DNABERT-2 export/import: a MultiMolecule directory with our logits, and back; the original release's layout, whose
published special ids are imported as the project's (rows 0..4 permuted, as the converted tokenizer's ids)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models

from dnabert.data.tokenizers.bpe import convert_bpe
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID
from dnabert.errors import DnabertError
from dnabert.models.dnabert2.interop import (
    dnabert2_from_multimolecule,
    dnabert2_to_multimolecule,
    export_dnabert2_model,
    init_from_dnabert2,
    load_dnabert2_into,
)
from dnabert.models.dnabert2.model import DnaBert2Config, DnaBert2ForMaskedLM
from dnabert.tools.export import export_checkpoint, main
from tests.dnabert2_release import (
    PUBLISHED_ORDER,
    in_project_order,
    project_rows,
    train_published_tokenizer,
    write_original_release,
)

multimolecule = pytest.importorskip("multimolecule")

PAD = 3  # the published tokenizer's
VOCAB = 64
TINY = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            pad_token_id=PAD, cls_token_id=1)
PROJECT_TINY = {**TINY, "pad_token_id": PAD_ID, "cls_token_id": CLS_ID}  # TINY imported with a converted tokenizer
SEQUENCES = ["ACGTACGGTTACAGATTACA", "TTGACCA", "GATTACAGATTACACCGTA"]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> str:
    generator = torch.Generator().manual_seed(0)
    corpus = ["".join("ACGT"[i] for i in torch.randint(0, 4, (200,), generator=generator)) for _ in range(20)]
    return str(train_published_tokenizer(corpus, VOCAB, tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"))


@pytest.fixture(scope="module")
def model() -> DnaBert2ForMaskedLM:
    torch.manual_seed(0)
    trained_like = DnaBert2ForMaskedLM(DnaBert2Config(**TINY)).eval()
    with torch.no_grad():  # non-zero biases, so that a lost or misplaced bias shows up in the logits
        trained_like.cls.predictions.decoder.bias.normal_(std=0.5)
        for layer in trained_like.bert.encoder.layer:
            layer.attention.self.Wqkv.bias.normal_(std=0.5)
    return trained_like


def encoded(tokenizer: str | Tokenizer, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = Tokenizer.from_file(tokenizer) if isinstance(tokenizer, str) else tokenizer
    rows = [torch.tensor(encoding.ids) for encoding in tokenizer.encode_batch(SEQUENCES)]
    input_ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad)
    return input_ids, input_ids != pad


def assert_multimolecule_logits_equal(model: DnaBert2ForMaskedLM, directory, tokenizer_file: str) -> None:
    loaded, info = multimolecule.DnaBert2ForMaskedLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    input_ids, real = encoded(tokenizer_file)
    with torch.no_grad():
        ours = model(input_ids)
        theirs = loaded.eval()(input_ids).logits  # its default attention mask: input_ids != config.pad_token_id
    assert (theirs - ours)[real].abs().max() <= 1e-4


def test_multimolecule_export_loads_with_our_logits_and_tokenizer(model, tokenizer_file, tmp_path):
    out_dir = export_dnabert2_model(model, tokenizer_file, tmp_path / "mm", card_config={"max_steps": 500000})
    assert_multimolecule_logits_equal(model, out_dir, tokenizer_file)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["model_type"] == "dnabert2" and config["pad_token_id"] == PAD and config["bos_token_id"] == 1
    from transformers import AutoTokenizer

    exported_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    reference = Tokenizer.from_file(tokenizer_file)
    assert exported_tokenizer(SEQUENCES[0])["input_ids"] == reference.encode(SEQUENCES[0]).ids
    assert (exported_tokenizer.pad_token_id, exported_tokenizer.mask_token, exported_tokenizer.cls_token_id) == (
        PAD, "[MASK]", 1)
    card = (out_dir / "README.md").read_text()
    assert '"max_steps": 500000' in card and '"hidden_size": 32' in card


def test_multimolecule_directory_imports_back_exactly(model, tokenizer_file, tmp_path):
    """Exactly, up to the published special ids of this tokenizer, which the import puts in the project's order."""
    out_dir = export_dnabert2_model(torch.compile(model), tokenizer_file, tmp_path / "mm")  # compiled: plain keys
    imported = init_from_dnabert2(out_dir)
    project_config = DnaBert2Config(**PROJECT_TINY)
    assert imported.config == project_config
    expected = in_project_order(model.state_dict())
    assert imported.state_dict().keys() == expected.keys()
    assert all(torch.equal(imported.state_dict()[key], value) for key, value in expected.items())
    assert imported.cls.predictions.decoder.weight is imported.bert.embeddings.word_embeddings.weight
    fresh = DnaBert2ForMaskedLM(project_config)
    load_dnabert2_into(fresh, out_dir)
    assert all(torch.equal(fresh.state_dict()[key], value) for key, value in expected.items())
    with pytest.raises(DnabertError, match="imports with .*'pad_token_id': 0.* the model has pad_token_id=3"):
        load_dnabert2_into(DnaBert2ForMaskedLM(DnaBert2Config(**TINY)), out_dir)  # published ids: wrong rows
    renamed = dnabert2_to_multimolecule(model.state_dict(), model.config.hidden_size)
    assert dnabert2_from_multimolecule(renamed).keys() == model.state_dict().keys()


@pytest.mark.parametrize("with_pooler", [False, True])
def test_original_release_layout_imports_with_equal_logits(model, tokenizer_file, tmp_path, with_pooler):
    """The release fed the published tokenizer's ids (pad 3) and the import fed the converted tokenizer's (pad 0)
    give the same logits at real positions, the vocabulary columns in the project's order."""
    from multimolecule.models.dnabert2.convert_checkpoint import _convert_checkpoint

    write_original_release(model, tmp_path / "release", tokenizer_file, with_pooler)
    imported = init_from_dnabert2(tmp_path / "release").eval()
    assert (imported.config.pad_token_id, imported.config.cls_token_id) == (PAD_ID, CLS_ID)
    converted, order = convert_bpe(tokenizer_file)
    assert order == PUBLISHED_ORDER
    published_ids, real = encoded(tokenizer_file)
    project_ids, project_real = encoded(converted, pad=PAD_ID)
    assert torch.equal(project_real, real) and torch.equal(project_rows(VOCAB).argsort()[published_ids][real],
                                                            project_ids[real])
    # MultiMolecule's own converter reads the same file: the key names are the original's as it knows them
    reference_config = multimolecule.DnaBert2Config(**{"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 2,
                                                       "num_attention_heads": 4, "intermediate_size": 48})
    reference = multimolecule.DnaBert2ForMaskedLM(reference_config).eval()
    original = torch.load(tmp_path / "release" / "pytorch_model.bin", weights_only=True)
    original = {key: value for key, value in original.items() if not key.startswith("bert.pooler.")}
    reference.load_state_dict(_convert_checkpoint(reference_config, original), strict=True)
    with torch.no_grad():
        ours = imported(project_ids)
        assert (ours - model(published_ids)[..., project_rows(VOCAB)])[real].abs().max() <= 1e-6
        theirs = reference(published_ids, attention_mask=real.long()).logits[..., project_rows(VOCAB)]
        assert (ours - theirs)[real].abs().max() <= 1e-4


def lightning_checkpoint(model: DnaBert2ForMaskedLM, path, tokenizer: str | None = None) -> None:
    """What the LightningModule saves for a dnabert2 run (family, model config, the resolved run config)."""
    state_dict = {f"model._orig_mod.{key}": value for key, value in model.state_dict().items()}
    train_config = {"optim": {"lr": 5e-4}, "tokenizer": {"kind": "bpe", "file": tokenizer}}
    hyper_parameters = {"family": "dnabert2", "k": 6, "model_config": model.config.to_dict(),
                        "train_config": train_config}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state_dict, "hyper_parameters": hyper_parameters, "global_step": 7}, path)


def test_run_directory_export_from_the_command_line(model, tokenizer_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    lightning_checkpoint(model, run_dir / "checkpoints" / "last.ckpt")
    assert main([str(run_dir), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "Found no tokenizer" in error and "run/tokenizer.json" in error and "--tokenizer PATH" in error
    assert main([str(run_dir), str(tmp_path / "out"), "--tokenizer", tokenizer_file]) == 0
    assert_multimolecule_logits_equal(model, tmp_path / "out", tokenizer_file)
    # without --tokenizer: the run config's tokenizer.file (a cached tokenizer's folder), then the run directory's
    lightning_checkpoint(model, run_dir / "checkpoints" / "last.ckpt", tokenizer=str(Path(tokenizer_file).parent))
    assert '"global_step": 7' in (export_checkpoint(run_dir, tmp_path / "out") / "README.md").read_text()
    lightning_checkpoint(model, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "tokenizer.json").write_text(Path(tokenizer_file).read_text())
    out_dir = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", tmp_path / "out")
    assert_multimolecule_logits_equal(model, out_dir, tokenizer_file)


def test_wrong_tokenizer_layout_and_directories_are_clear_errors(model, tokenizer_file, tmp_path):
    with pytest.raises(DnabertError, match="multimolecule layout only"):
        export_dnabert2_model(model, tokenizer_file, tmp_path / "out", layout="original")
    small = DnaBert2ForMaskedLM(DnaBert2Config(**{**TINY, "vocab_size": 32}))
    with pytest.raises(DnabertError, match="not the model's tokenizer"):
        export_dnabert2_model(small, tokenizer_file, tmp_path / "out")
    other_pad = DnaBert2ForMaskedLM(DnaBert2Config(**{**TINY, "pad_token_id": 0}))
    with pytest.raises(DnabertError, match="pad_token_id=0"):
        export_dnabert2_model(other_pad, tokenizer_file, tmp_path / "out")
    (tmp_path / "kmer.json").write_text(Tokenizer(models.BPE()).to_str())
    with pytest.raises(DnabertError, match="lacks the special token"):
        export_dnabert2_model(model, tmp_path / "kmer.json", tmp_path / "out")
    with pytest.raises(DnabertError, match="no config.json"):
        init_from_dnabert2(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(model.config.to_dict()))
    with pytest.raises(DnabertError, match="no weights file"):
        init_from_dnabert2(tmp_path / "empty")
    out_dir = export_dnabert2_model(model, tokenizer_file, tmp_path / "mm")
    with pytest.raises(DnabertError, match="do not fit"):
        load_dnabert2_into(DnaBert2ForMaskedLM(DnaBert2Config(**{**PROJECT_TINY, "intermediate_size": 64})), out_dir)
