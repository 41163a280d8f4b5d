"""LoRA adapters in fine-tuning (`adapter=lora`, dnabert.run.adapters) for both built-in families and a third one:
only the adapter and the head train, `adapter/` holds only them, it reloads onto the backbone with identical
outputs, the merged export gives the adapted model's outputs, and a target that matches no layer is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dnabert.data.tokenizers.bpe import BpeWindowTokenizer, new_bpe_tokenizer, save_bpe
from dnabert.errors import DnabertError
from dnabert.models import get_family
from dnabert.models.dnabert.model import DnaBertConfig
from dnabert.models.interop import prefix_renamed
from dnabert.run.adapters import load_adapter, lora_settings, parameter_counts
from dnabert.run.finetuning import (
    Backbone,
    TaskLoaders,
    build_classifier,
    build_encoder,
    fine_tune_seed,
    load_task,
    resolve_backbone,
)
from dnabert.run.saved_models import CLASSIFIER_RENAMES, load_classifier_checkpoint
from dnabert.tasks.finetune import predict
from tests.conftest import ROOT
from tests.test_dnabert2_finetune import TINY as DNABERT2_TINY
from tests.test_dnabert2_finetune import _trainer, assert_export_gives_our_logits
from tests.test_finetune import TINY, assert_transformers_outputs_equal_ours, compose_finetune, small_task
from tests.third_family import ConvConfig

SEED = 3
THIRD = "tests.third_family:FAMILY"
HEAD = {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"}
ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "head.safetensors", "classifier.json"}


@pytest.fixture(scope="module")
def bpe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    tokenizer = new_bpe_tokenizer()
    sequences = pd.read_csv(ROOT / "data" / "tasks" / "prom_core.tsv", sep="\t")["sequence"][:400]
    tokenizer.train_from_iterator(sequences, trainer=_trainer())
    return save_bpe(tokenizer, folder)


def pretrained_backbone(family: str, bpe_file: Path) -> Backbone:
    """A tiny backbone of `family` with fixed weights, as `pretrained=<run>` gives: any seed's classifier
    starts from them, so an adapter can be put back onto the backbone it was trained on."""
    if family == "dnabert":
        backbone = Backbone(family, 3, DnaBertConfig(vocab_size=69, **TINY).to_dict(), None, "test")
    elif family == "dnabert2":
        tokenizer = BpeWindowTokenizer(bpe_file)
        config = get_family(family).config_class()(vocab_size=tokenizer.vocab_size, **DNABERT2_TINY).to_dict()
        backbone = Backbone(family, None, config, None, "test", str(tokenizer.file))
    else:
        config = ConvConfig(vocab_size=69, hidden_size=32, max_position_embeddings=64).to_dict()
        backbone = Backbone(family, 3, config, None, "test")
    torch.manual_seed(0)
    backbone.weights = build_encoder(backbone).state_dict()
    return backbone


def expected_trainable(backbone: Backbone) -> int:
    """r (in + out) per adapted layer (r k in + r out for a convolution of kernel k), from the plain encoder's
    shapes and the family's declared targets, plus the whole head (pooler + classifier)."""
    encoder, r, count = build_encoder(backbone), 8, 0
    for name, module in encoder.named_modules():
        if name.rsplit(".", 1)[-1] not in get_family(backbone.family).lora_targets:
            continue
        if isinstance(module, nn.Linear):
            count += r * (module.in_features + module.out_features)
        elif isinstance(module, nn.Conv1d):
            count += r * module.in_channels * module.kernel_size[0] + r * module.out_channels
    hidden = backbone.config["hidden_size"]
    return count + hidden * hidden + hidden + 2 * hidden + 2


@pytest.mark.parametrize("family", ["dnabert", "dnabert2", THIRD])
def test_lora_trains_and_saves_only_the_adapter_and_head_and_reloads_exactly(family, bpe_file, tmp_path) -> None:
    backbone = pretrained_backbone(family, bpe_file)
    cfg = compose_finetune(f"task.train={small_task(tmp_path, 64)}", "task=file", "task.dev_fraction=0.25",
                           "task.test_fraction=0.25", "max_epochs=1", "batch_size=16", "logger=none", "adapter=lora",
                           "optim.lr=1e-2", f"paths.output_root={tmp_path}")
    data = load_task(cfg.task, backbone, max_positions=64)
    seed_dir = tmp_path / "seed"
    result = fine_tune_seed(cfg, backbone, data, SEED, seed_dir, devices=1)

    # Trainable: the adapter of every declared target layer, and the head; nothing else.
    trainable = expected_trainable(backbone)
    assert result["parameters"]["trainable"] == trainable
    assert result["parameters"]["total"] == sum(v.numel() for v in backbone.weights.values()) + trainable

    # adapter/: peft's files with the adapter alone (no frozen weight: DNABERT_2 issue #152), the head apart.
    adapter_dir = seed_dir / "adapter"
    assert {path.name for path in adapter_dir.iterdir()} == ADAPTER_FILES
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in key or ".lora_B." in key for key in adapter)
    head = load_file(adapter_dir / "head.safetensors")
    assert set(head) == HEAD
    assert sum(t.numel() for t in adapter.values()) + sum(t.numel() for t in head.values()) == trainable
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(get_family(family).lora_targets) and config["r"] == 8
    adapter_bytes = sum(path.stat().st_size for path in adapter_dir.iterdir())
    assert adapter_bytes < (seed_dir / "hf_model" / "model.safetensors").stat().st_size

    # Reloaded onto the backbone (a classifier of another seed), the adapter gives the run's outputs exactly.
    reloaded = load_adapter(build_classifier(backbone, 2, SEED + 1, 0.1), adapter_dir)
    test_loader = TaskLoaders(data, 16, SEED, 0).loader("test")
    outputs, _ = predict(reloaded, test_loader, torch.device("cpu"))
    predictions = np.load(seed_dir / "predictions.npz")
    assert torch.equal(outputs, torch.from_numpy(predictions["test_outputs"]))

    # The checkpoint holds the frozen backbone and the adapter (resume and export rebuild from it alone) and
    # optimiser state for the trainable tensors only; merged, it gives the adapted outputs without peft.
    checkpoint = torch.load(next((seed_dir / "checkpoints").glob("best-*.ckpt")), weights_only=False)
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(adapter) + len(head)
    merged, _, _ = load_classifier_checkpoint(next((seed_dir / "checkpoints").glob("best-*.ckpt")))
    assert not any("lora" in key or "base_layer" in key for key in merged.state_dict())
    merged_outputs, _ = predict(merged, test_loader, torch.device("cpu"))
    torch.testing.assert_close(merged_outputs, outputs, atol=1e-5, rtol=1e-4)
    # ... and the export is that merged model (loaded by transformers / MultiMolecule where the family has them).
    if family == "dnabert":
        assert_transformers_outputs_equal_ours(seed_dir, ["ACGTACGTTAGCAT", "TTTTGGGGCCAAGATTACA", "GATTACA"])
        # Resume: the same seed again continues from its LoRA last.ckpt (loaded strictly), trains no further
        # step and picks the same checkpoint.
        again = fine_tune_seed(cfg, backbone, data, SEED, seed_dir, devices=1)
        assert again["metrics"] == result["metrics"] and again["best_checkpoint"] == result["best_checkpoint"]
    elif family == "dnabert2":
        assert_export_gives_our_logits(seed_dir, bpe_file)
    else:
        exported = load_file(seed_dir / "hf_model" / "model.safetensors")
        merged_state = {prefix_renamed(key, CLASSIFIER_RENAMES): value for key, value in merged.state_dict().items()}
        assert exported.keys() == merged_state.keys()
        assert all(torch.equal(exported[key], merged_state[key]) for key in exported)


def test_a_target_that_matches_no_layer_is_refused_naming_the_layers(bpe_file) -> None:
    """DNABERT_2 issues #3 and #152: the usual `query,value` targets do not exist in MosaicBERT (fused Wqkv)."""
    backbone = pretrained_backbone("dnabert2", bpe_file)
    settings = {"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["query", "value"]}
    with pytest.raises(DnabertError) as caught:
        build_classifier(backbone, 2, SEED, 0.1, settings)
    assert str(caught.value) == (
        "lora.target_modules: 'query' matches no layer of the DNABERT-2 (MosaicBERT) encoder that LoRA can adapt; "
        "its layers are named word_embeddings, token_type_embeddings, Wqkv, dense, gated_layers, wo (a dotted "
        "suffix such as output.dense picks fewer); or set lora.target_modules=null for the family's default "
        "[Wqkv,dense,gated_layers,wo].")
    settings["target_modules"] = ["attention.output.dense"]  # a dotted suffix: only the attention's output
    classifier = build_classifier(backbone, 2, SEED, 0.1, settings)
    adapted = {name for name, _ in classifier.named_modules() if name.endswith(".lora_A")}
    assert adapted == {"backbone.base_model.model.bert.encoder.layer.0.attention.output.dense.lora_A"}


def test_finetune_cli_refuses_a_missing_target_with_exit_2_before_training(bpe_file, tmp_path) -> None:
    command = [sys.executable, str(ROOT / "finetune.py"), "pretrained=none", "model=dnabert2_tiny", "tokenizer=bpe",
               f"tokenizer.file={bpe_file}", "adapter=lora", "lora.target_modules=[query,value]", "task=file",
               f"task.train={small_task(tmp_path, 64)}", f"paths.output_root={tmp_path / 'out'}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("dnabert: error: lora.target_modules: 'query' matches no layer of the DNABERT-2")
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*/*/seed_*"))  # nothing trained, no seed folder


def test_the_readme_parameter_counts_are_the_demo_backbones() -> None:
    """The README's adapter figures for the demo's backbone (finetune.py's defaults, the demo's architecture): full
    fine-tuning trains 1,004,290 parameters, `adapter=lora` 53,634 (the adapter and the head)."""
    cfg = compose_finetune("adapter=lora")
    backbone = resolve_backbone("none", int(cfg.tokenizer.k), dict(cfg.model))
    full = parameter_counts(build_classifier(backbone, 2, SEED, 0.1))
    lora = parameter_counts(build_classifier(backbone, 2, SEED, 0.1, lora_settings(cfg)))
    assert (full["trainable"], lora["trainable"]) == (1_004_290, 53_634)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "with 53,634 of 1,004,290 parameters trained" in readme
