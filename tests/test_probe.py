"""The downstream probe during pretraining (issue 13): deterministic, leaves training alone, logs everywhere."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dnabert.errors import DnabertError
from dnabert.models.dnabert.model import DnaBertConfig, DnaBertForMaskedLM
from dnabert.run.probe import PROBE_METRICS, DownstreamProbe
from tests.conftest import ROOT
from tests.training_runs import assert_same_weights, final_weights, metric_by_step, run_dir, train

PROM_CORE = ROOT / "data" / "tasks" / "prom_core.tsv"


def tiny_module() -> SimpleNamespace:
    """What the probe uses of the pretraining LightningModule: `.model` (with `encode`) and `.device`."""
    torch.manual_seed(0)
    config = DnaBertConfig(vocab_size=4**6 + 5, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
    return SimpleNamespace(model=DnaBertForMaskedLM(config), device=torch.device("cpu"))


def test_probe_is_deterministic_and_draws_nothing_from_the_global_rngs() -> None:
    module = tiny_module()
    module.model.train()
    probe = DownstreamProbe(str(PROM_CORE), k=6, max_sequences=300, seed=3)
    probe.setup(None, module, "fit")
    assert len(probe.train_rows) == 150 and len(probe.test_rows) == 150
    rng_before = torch.get_rng_state()
    first = probe.score(probe.embed(module))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert module.model.training  # its mode is left as found (the probe itself runs in eval mode)
    again = DownstreamProbe(str(PROM_CORE), k=6, max_sequences=300, seed=3)  # a fresh probe: same subset, split
    again.setup(None, module, "fit")
    second = again.score(again.embed(module))
    assert first == second and set(first) == set(PROBE_METRICS)
    assert -1 <= first["probe/mcc"] <= 1 and 0 <= first["probe/auroc"] <= 1
    other_seed = DownstreamProbe(str(PROM_CORE), k=6, max_sequences=300, seed=4)
    assert other_seed.data.sequences != probe.data.sequences


def test_probe_refuses_a_file_without_two_classes_in_each_part(tmp_path: Path) -> None:
    path = tmp_path / "one.tsv"
    path.write_text("sequence\tlabel\nACGTACGTAC\t1\nACGTACGTAA\t1\nACGTACGTAG\t0\n")
    with pytest.raises(DnabertError, match="one class only"):
        DownstreamProbe(str(path), k=3, max_sequences=3)


@pytest.mark.slow
def test_probe_logs_to_every_logger_and_leaves_the_training_trajectory_alone(tmp_path: Path) -> None:
    """The demo's probe on the bundled task, with CSV and TensorBoard: logged at each validation in both, in the
    report, and the trained weights are those of the same run without the probe."""
    train(tmp_path, "probe", "logger=tensorboard", f"probe.path={PROM_CORE}", "probe.max_sequences=200")
    train(tmp_path, "plain", "probe.path=null")
    probed = run_dir(tmp_path, "probe")
    assert_same_weights(final_weights(probed), final_weights(run_dir(tmp_path, "plain")), atol=0)
    val_steps = sorted(metric_by_step(probed, "val/loss"))
    for name in PROBE_METRICS:
        assert sorted(metric_by_step(probed, name)) == val_steps, name
    assert "probe/mcc" not in (run_dir(tmp_path, "plain") / "csv" / "metrics.csv").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(probed / "tensorboard")).Reload()
    assert set(PROBE_METRICS) <= set(events.Tags()["scalars"])
    logged = {event.step: event.value for event in events.Scalars("probe/mcc")}
    assert logged == pytest.approx(metric_by_step(probed, "probe/mcc"))
    report = (probed / "report.md").read_text()
    assert "| probe/mcc (first -> last" in report
