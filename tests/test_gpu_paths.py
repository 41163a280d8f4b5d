"""What a GPU run does, rehearsed on the CPU through the real entry point, so that a GPU run breaks here first.

1. bf16-mixed through Lightning, both families, against the same run in fp32: packed rows, masking on the device,
   the masked-only head, the probe at every validation and the export at the end.
2. The paper experiments, two optimiser steps each at their own settings; only what a CPU forces is changed
   (`PAPER_ON_A_CPU`). None of them defaults to FlexAttention, which could not train here (no CPU backward in
   torch; `test_paper_experiments_use_sdpa` says so if one ever does); its backward is the CUDA-only test below.
3. Fine-tuning a FlexAttention backbone on a CPU: the lever is not part of the backbone, so it runs SDPA.

Compile is tested per family in test_levers.py / test_dnabert2_model.py (inductor, packed and unpacked) and here
through the trainer with bf16 and packing in `experiment=dnabert2_paper`.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dnabert.data.masking import mask_batch
from dnabert.data.packing import pack_rows, place
from dnabert.data.tokenizers.special import CLS_ID, PAD_ID, SEP_ID
from dnabert.models import build_model
from dnabert.models.components import IGNORE_INDEX, masked_lm_loss
from dnabert.models.dnabert.model import DnaBertConfig, DnaBertForMaskedLM
from dnabert.run.finetuning import build_encoder, resolve_backbone
from dnabert.tasks.pretrain import MaskedLMModule
from dnabert.tools.export import load_checkpoint
from tests.conftest import DEMO_FASTA, ROOT
from tests.training_runs import metric_by_step, train

PROBE = (f"probe.path={ROOT / 'data' / 'tasks' / 'prom_core.tsv'}", "probe.max_sequences=200")
DEMOS = {"dnabert": ("demo", ()), "dnabert2": ("dnabert2_demo", ("experiment=dnabert2_demo",))}
# 2 validations with the probe; the last of TINY's checkpoints (every 4 steps) is the final step's, as exported
SHORTER = ("max_steps=8", "trainer.val_every_n_steps=4", "masking.final_rate_steps=2")
# bf16 keeps 8 bits of mantissa; in these 8 steps of a 1-layer model it moves the loss by about 1e-4 nats.
BF16_LOSS_TOLERANCE = 0.01


@pytest.fixture(scope="module", params=sorted(DEMOS))
def precisions(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, tuple[Path, str]]]:
    """One family's demo (training_runs.TINY, 8 steps, 2 validations) with packed rows, the probe and the export,
    in fp32 and in bf16-mixed: (family, {precision: (run directory, output)})."""
    family = request.param
    experiment, overrides = DEMOS[family]
    output_root = tmp_path_factory.mktemp(family)
    runs = {}
    for precision in ("32-true", "bf16-mixed"):
        output = train(output_root, precision, *overrides, *SHORTER, "data.pack_rows=true", *PROBE, "export=true",
                       f"trainer.precision={precision}")
        runs[precision] = (output_root / experiment / precision, output)
    return family, runs


def test_bf16_trains_like_fp32(precisions: tuple[str, dict[str, tuple[Path, str]]]) -> None:
    """Same losses within bf16's rounding, but not the same numbers: autocast really ran in bf16."""
    (fp32, fp32_output), (bf16, bf16_output) = precisions[1]["32-true"], precisions[1]["bf16-mixed"]
    assert "precision 32-true" in fp32_output and "packed rows on" in fp32_output
    assert "precision bf16-mixed" in bf16_output and "Using bfloat16 Automatic Mixed Precision" in bf16_output
    for metric in ("train/loss", "val/loss"):
        expected, got = metric_by_step(fp32, metric), metric_by_step(bf16, metric)
        assert got.keys() == expected.keys() and len(got) >= 2, metric
        assert all(math.isfinite(value) for value in got.values()), metric
        differences = [abs(got[step] - expected[step]) for step in got]
        assert max(differences) <= BF16_LOSS_TOLERANCE, (metric, differences)
        assert max(differences) > 0, f"{metric}: bf16 gave fp32's numbers exactly; was autocast on?"
    for metric in ("probe/mcc", "probe/auroc"):  # embedded outside autocast, with the float32 master weights
        expected, got = metric_by_step(fp32, metric), metric_by_step(bf16, metric)
        assert got.keys() == expected.keys() and len(got) == 2, metric
        assert got == pytest.approx(expected, abs=0.05), metric


def test_bf16_run_exports_its_float32_weights(precisions: tuple[str, dict[str, tuple[Path, str]]]) -> None:
    """bf16-mixed keeps float32 master weights: the export holds them, exactly, in float32."""
    family, runs = precisions
    run_dir, _ = runs["bf16-mixed"]
    trained, k, _ = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    exported = build_model(family, trained.config.to_dict())
    if family == "dnabert2":
        from dnabert.models.dnabert2.interop import load_dnabert2_into

        load_dnabert2_into(exported, run_dir / "hf_model")
    else:
        from dnabert.models.dnabert.interop import load_pretrained_into

        load_pretrained_into(exported, run_dir / "hf_model", k)
    expected = trained.state_dict()
    for name, tensor in exported.state_dict().items():
        assert tensor.dtype == torch.float32, name
        torch.testing.assert_close(tensor, expected[name], atol=0, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------ paper experiments
# What a CPU forces on the paper experiments; every other setting is the experiment's own (DDP strategy with one
# process, packed rows, masking on the device, masked-only head, window length, micro-batch, data workers, LR
# schedule, mask rates, checkpoint and export). AdamW is not fused here: dnabert fuses it on CUDA only
# (`build_adamw`; test_levers.py shows the fused step equals this one).
PAPER_ON_A_CPU = (
    "trainer.accelerator=cpu", "trainer.devices=1",
    "trainer.precision=bf16-mixed",  # what precision=auto becomes on an H100 (on a CPU, auto is 32-true)
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2", "model.intermediate_size=64",
    "max_steps=2", f"data.fasta={DEMO_FASTA}",  # the bundled demo genome as the paper's data
    "trainer.log_every_n_steps=1",  # the GPU configs log every 50 steps
)
PAPERS = {
    # experiment: (micro-batch, its own window, what else the CPU forces, uniform loss ln V, compile)
    "dnabert3_paper": (10, 512, ("global_batch_size=20", "masking.final_rate_steps=1"), math.log(4**3), False),
    "dnabert6_paper": (10, 512, ("global_batch_size=20", "masking.final_rate_steps=1"), math.log(4**6), False),
    # 1 Gbp of tokenizer training would take an hour. Compiled, as BENCHMARKS.md part F times DNABERT-2 (the guide
    # names compile an option, recommended for no experiment; one compiled run through the trainer costs ~30 s here,
    # so the k-mer family's compile is test_levers.py's). Micro-batch 64 of its 128: the first packed micro-batch of
    # 128 rows x 128 tokens makes dynamo assume rows == width, and its recompile costs 15 s more here.
    "dnabert2_paper": (64, 128, ("data.micro_batch_size=64", "global_batch_size=128", "tokenizer.train_bp=1000000"),
                       math.log(4091), True),
}


@pytest.fixture(scope="module", params=sorted(PAPERS))
def paper_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """(experiment, output root, output) of one paper experiment's two steps at `PAPER_ON_A_CPU`."""
    experiment = request.param
    micro, window, forced, uniform, compiled = PAPERS[experiment]
    output_root = tmp_path_factory.mktemp(experiment)
    # The run's own inductor cache shows that compile really generated code; TORCH_LOGS reports any recompile.
    env = {"TORCHINDUCTOR_CACHE_DIR": str(output_root / "inductor"), "TORCH_LOGS": "recompiles"}
    output = train(output_root, "cpu", f"experiment={experiment}", *PAPER_ON_A_CPU, *forced,
                   f"model.compile={str(compiled).lower()}", base=(), env=env)
    return experiment, output_root, output


def test_paper_experiment_trains_at_its_own_settings(paper_run: tuple[str, Path, str]) -> None:
    """A finite loss near ln V at both steps, with the settings a GPU run has, read from the log and the resolved
    config: bf16 autocast, DDP, accumulation, packed rows, masked-only head, the paper's windows and mask rates."""
    experiment, output_root, output = paper_run
    run_dir = output_root / experiment / "cpu"
    micro, window, _, uniform, compiled = PAPERS[experiment]
    assert f"micro {micro} x accumulation 2 x devices 1 x nodes 1; precision bf16-mixed" in output
    assert "Using bfloat16 Automatic Mixed Precision" in output and "Starting with 1 processes" in output  # DDP
    assert (f"packed rows on, LM head on masked positions only, attention sdpa, compile {'on' if compiled else 'off'}"
            in output)
    if compiled:
        assert list((output_root / "inductor").rglob("*.py")), "model.compile=true generated no inductor code"
    # Dynamic shapes: one graph for micro-batches of every size, after at most one recompile of each compiled function
    # (see PAPERS); a recompile per batch would fall back to eager after 8.
    recompiles = collections.Counter(re.findall(r"Recompiling function (\w+)", output))
    assert all(count <= 1 for count in recompiles.values()), recompiles
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert config.trainer.strategy == "ddp" and config.optim.fused and config.data.pack_rows
    assert config.data.max_tokens == window and config.data.micro_batch_size == micro
    losses = metric_by_step(run_dir, "train/loss")
    assert sorted(losses) == [0, 1]
    assert all(math.isfinite(loss) and abs(loss - uniform) < 0.5 for loss in losses.values()), losses
    rates = metric_by_step(run_dir, "mask_rate")
    assert rates == pytest.approx({0: 0.15, 1: 0.20 if config.masking.final_rate_steps else 0.15})
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "hf_model" / "config.json").is_file()


def test_paper_experiments_use_sdpa(compose_config) -> None:
    """If a paper experiment defaulted to FlexAttention, its CPU rehearsal above would need model.attention=sdpa
    as a stated substitute (the kernels agree: test_levers.py, test_dnabert2_model.py)."""
    for experiment in PAPERS:
        assert compose_config(f"experiment={experiment}").model.attention == "sdpa", experiment


# ------------------------------------------------------------------------------------------ FlexAttention
def test_finetuning_a_flex_backbone_runs_sdpa(tmp_path: Path) -> None:
    """`model.attention` is a pretraining lever, not architecture: the backbone of a FlexAttention run fine-tunes
    (backward included) through SDPA on a CPU."""
    config = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                  attention_probs_dropout_prob=0.0, vocab_size=4**3 + 5)
    module = MaskedLMModule(k=3, model_config=config, masking={"rate": 0.15, "final_rate": 0.2}, optim={},
                              attention="flex", packed=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "flex.ckpt")
    backbone = resolve_backbone(str(tmp_path / "flex.ckpt"), 3, {})
    encoder = build_encoder(backbone)
    assert encoder.attention == "sdpa"
    input_ids = torch.randint(5, config["vocab_size"], (2, 12))
    encoder.encode(input_ids, attention_mask=torch.ones_like(input_ids, dtype=torch.bool)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (FlexAttention has no CPU backward)")
def test_cuda_flex_attention_backward_equals_sdpa() -> None:
    """BERT over k-mers on the GPU: packed rows through FlexAttention (compiled by `flex_attention_for`), loss and
    gradients against SDPA with the dense block-diagonal mask, float32 (DNABERT-2's, with bf16 and compile:
    test_dnabert2_model.py::test_cuda_levers_together_match_float32_sdpa)."""
    torch.manual_seed(0)
    config = DnaBertConfig(vocab_size=4**3 + 5, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    sdpa = DnaBertForMaskedLM(config).cuda()
    flex = DnaBertForMaskedLM(config, attention="flex").cuda()
    flex.load_state_dict(sdpa.state_dict())
    generator = torch.Generator().manual_seed(0)
    lengths = [60, 14, 36, 24, 60, 10]
    windows = torch.full((len(lengths), 64), PAD_ID)
    for row, length in enumerate(lengths):
        windows[row, 0], windows[row, length - 1] = CLS_ID, SEP_ID
        windows[row, 1 : length - 1] = torch.randint(5, config.vocab_size, (length - 2,), generator=generator)
    input_ids, labels = mask_batch(windows, 3, 0.3, generator)
    packed_ids, plan = pack_rows(input_ids, row_tokens=64)
    packed_ids, packed_labels = packed_ids.cuda(), place(labels, plan, IGNORE_INDEX).cuda()
    masked = packed_labels != IGNORE_INDEX
    results = []
    for model in (sdpa, flex):
        loss = masked_lm_loss(model(packed_ids, masked_positions=masked, packed=True), packed_labels[masked])
        loss.backward()
        results.append((loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}))
    (expected_loss, expected_grads), (loss, grads) = results
    torch.testing.assert_close(loss, expected_loss, atol=1e-4, rtol=1e-4)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-4, rtol=1e-3, msg=name)
