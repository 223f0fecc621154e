"""Two-process training (``trainer=ddp_cpu``, gloo): the same losses as one process, and outputs from rank 0 only.

One fixture runs the real train stage (``python -m nmt.stages.train``) with ``trainer=ddp_cpu`` in a tiny
project, so that Lightning launches the second rank as it does for users, and then the references and evaluate
stages. The tests read its MLflow store and output folders.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from nmt.data.batching import TokenBatchSampler, collate
from nmt.loss import sequence_loss
from nmt.stages import evaluate
from nmt.stages import references as references_stage
from nmt.tokenizer import PAD_ID
from nmt.training.datamodule import TranslationDataModule
from nmt.training.module import TranslationModule
from nmt.training.resume import STATE_FILE
from tiny_project import new_project, prepared_folder, stage_env, tiny_config, wait_for_mid_epoch_state

pytestmark = pytest.mark.slow

WORLD_SIZE = 2  # conf/trainer/ddp_cpu.yaml: devices
# fp32 without dropout, so that both sides compute the same function. A short warmup makes the weights move
# enough in 2 epochs (18 steps) that a wrongly weighted gradient shows in the losses.
DDP_OVERRIDES = [
    "trainer=ddp_cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=2",
    "model.dropout=0.0",
    "optim.warmup_steps=4",
    "train.log_every_n_steps=1",
    "train.checkpoint_every_n_steps=null",
    "train.average_last_n=2",
    "train.val_bleu=true",
    "train.monitor=val/bleu",
]
# Relative tolerance on each step's loss. Both sides compute the same global token-mean loss and gradient in
# fp32, but not in the same order. The single process pads the union of the two ranks' batches to one length
# and sums the gradient in one backward pass. DDP sums two per-rank gradients in gloo's all-reduce. Each of
# these orders changes a float32 result by a few ulps (about 1e-7 relative), and Adam passes the
# differences on to the weights, so they grow slowly with the steps. Measured on a 2-core x86 CPU: at most
# 2.3e-7 over the 18 steps. The tolerance leaves a factor of 40 for other CPUs and thread counts. Without the
# token weighting in TranslationModule (plain DDP averaging of per-rank means) the same run differs by 2.8e-5
# at step 1 and 9e-4 by the end, so the tolerance catches it from the first update on.
LOSS_RTOL = 1e-5


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_dir) -> Path:
    return prepared_folder(tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def ddp_run(prepared, tmp_path_factory, data_dir):
    """Run the train stage with trainer=ddp_cpu, then references and evaluate, in a fresh tiny project."""
    root = tmp_path_factory.mktemp("ddp")
    cfg = tiny_config(root, *DDP_OVERRIDES, f"data.local_dir={data_dir}")
    paths = new_project(root, prepared, cfg)
    before = {path.relative_to(root) for path in root.rglob("*")}

    result = subprocess.run([sys.executable, "-m", "nmt.stages.train"], cwd=root, env=stage_env(),
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    references_stage.run(cfg, paths)
    evaluate.run(cfg, paths)

    summary = json.loads((paths.models / "train_summary.json").read_text())
    return {"cfg": cfg, "paths": paths, "output": output, "summary": summary, "before": before}


def single_process_losses(cfg, paths) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Train like the DDP run in this process, each step on the union of the two ranks' batches of that step.

    The model is built as the train stage builds it (same seed, same order of RNG use), so it starts from the
    same weights. Returns the loss of every step and the final weights.
    """
    L.seed_everything(cfg.seed, workers=True)
    datamodule = TranslationDataModule(cfg, paths)
    datamodule.setup()
    tokenizers = datamodule.tokenizers
    module = TranslationModule(OmegaConf.to_container(cfg, resolve=True), tokenizers.source.vocab_size,
                               tokenizers.target.vocab_size)
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]

    examples = datamodule.examples["train"]
    lengths = [(len(e.src), len(e.tgt)) for e in examples]
    samplers = [TokenBatchSampler(lengths, cfg.train.max_tokens, shuffle=True, seed=cfg.seed,
                                  num_replicas=WORLD_SIZE, rank=rank) for rank in range(WORLD_SIZE)]
    module.train()
    losses = []
    for epoch in range(cfg.trainer.max_epochs):
        for sampler in samplers:
            sampler.set_epoch(epoch)
        for rank_batches in zip(*samplers):
            batch = collate([examples[i] for batch in rank_batches for i in batch])
            loss, _ = sequence_loss(module.model, batch["src"], batch["tgt_in"], batch["tgt_out"], PAD_ID,
                                    cfg.train.label_smoothing)
            losses.append(float(loss.detach()))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
    weights = {f"model.{name}": value.detach().clone() for name, value in module.model.state_dict().items()}
    return losses, weights


def logged_train_losses(cfg, run_id: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    history = client.get_metric_history(run_id, "train/loss_step")
    return sorted((m.step, m.value) for m in history)


def test_two_ranks_were_launched(ddp_run):
    assert f"MEMBER: {WORLD_SIZE}/{WORLD_SIZE}" in ddp_run["output"]
    assert "distributed_backend=gloo" in ddp_run["output"]


def test_ddp_losses_match_single_process(ddp_run):
    cfg, paths, summary = ddp_run["cfg"], ddp_run["paths"], ddp_run["summary"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected, expected_weights = single_process_losses(cfg, paths)
    finally:
        torch.set_num_threads(threads)

    logged = logged_train_losses(cfg, summary["mlflow_run_id"])
    assert summary["steps"] == len(expected)
    assert [step for step, _ in logged] == list(range(len(expected)))
    differences = [abs(value - reference) / abs(reference) for (_, value), reference in zip(logged, expected)]
    print(f"max relative loss difference DDP vs one process over {len(expected)} steps: {max(differences):.3g}")
    for step, ((_, value), reference) in enumerate(zip(logged, expected)):
        assert value == pytest.approx(reference, rel=LOSS_RTOL), f"step {step}: DDP {value}, one process {reference}"
    assert expected[-1] < expected[0] - 0.1, "the weights barely moved, so the comparison shows little"

    final = torch.load(paths.models / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert final.keys() == expected_weights.keys()
    for name, value in expected_weights.items():
        # Measured: at most 1.2e-7 apart. Adam moves a weight by up to lr = 1e-3 per step, so 1e-5 is far below
        # one step's change.
        torch.testing.assert_close(final[name], value, rtol=1e-4, atol=1e-5, msg=f"{name} differs")


def test_ddp_run_writes_one_mlflow_run(ddp_run):
    cfg, summary = ddp_run["cfg"], ddp_run["summary"]
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.run_id for run in runs] == [summary["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["stop_reason"] == "max_epochs"
    assert run.data.metrics["test_2016_flickr/bleu"] >= 0.0

    # A second rank logging into the same run would repeat steps.
    steps = [step for step, _ in logged_train_losses(cfg, run.info.run_id)]
    assert len(steps) == len(set(steps)) == summary["steps"]
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    samples = [artifact.path for artifact in client.list_artifacts(run.info.run_id, "samples")]
    assert samples == ["samples/epoch_000.txt", "samples/epoch_001.txt"]


def test_ddp_run_writes_outputs_once(ddp_run):
    paths = ddp_run["paths"]
    assert sorted(p.name for p in paths.models.iterdir()) == [
        "average.ckpt", "best.ckpt", "last.ckpt", "train_summary.json"]
    assert sorted(p.name for p in paths.reports.iterdir()) == [
        "attention_1.png", "attention_2.png", "attention_3.png", "environment.json", "grad_norms.png",
        "metrics.json", "samples.md"]
    assert not paths.checkpoints.exists() or list(paths.checkpoints.iterdir()) == []

    root = paths.root
    created = {path.relative_to(root) for path in root.rglob("*")} - ddp_run["before"]
    created_top = {path.parts[0] for path in created}
    assert created_top <= {"data", "models", "reports", "checkpoints", "mlflow.db", "mlartifacts"}, created_top
    assert {path.parts[1] for path in created if path.parts[0] == "data"} <= {"references", "raw"}
    stray = [path for path in created
             if "lightning_logs" in path.parts or (path.suffix == ".ckpt" and path.parts[0] != "models")]
    assert stray == []

    metrics = json.loads((paths.reports / "metrics.json").read_text())
    assert metrics["train"]["steps"] == ddp_run["summary"]["steps"]


def test_ddp_model_selection_scores_whole_val_split(ddp_run):
    """Rank 0 scores the best checkpoint after training on every validation sentence, not on its half."""
    cfg, paths, summary = ddp_run["cfg"], ddp_run["paths"], ddp_run["summary"]
    best_epoch = torch.load(paths.models / "best.ckpt", map_location="cpu", weights_only=False)["epoch"]
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    val_losses = [m.value for m in sorted(client.get_metric_history(summary["mlflow_run_id"], "val/loss"),
                                          key=lambda m: m.step)]
    val_bleu = [m.value for m in sorted(client.get_metric_history(summary["mlflow_run_id"], "val/bleu"),
                                        key=lambda m: m.step)]
    assert len(val_losses) == len(val_bleu) == 2

    # val/loss during training is gathered from both ranks, and the summary rounds it to 4 decimals.
    assert summary["monitor"] == "val/bleu"
    assert summary["best_val_loss"] == pytest.approx(val_losses[best_epoch], abs=1e-4)
    assert summary["best_val_bleu"] == pytest.approx(val_bleu[best_epoch], abs=1e-6)
    assert math.isfinite(summary["average_val_loss"])
    assert len(summary["averaged_steps"]) == 2
    assert summary["averaged_steps"][-1] == summary["steps"]


def test_ddp_diverging_run_fails_cleanly(prepared, tmp_path, data_dir):
    """Both ranks see the non-finite loss at the same step: the stage exits 1 naming it, the run is FAILED."""
    cfg = tiny_config(tmp_path, "trainer=ddp_cpu", "trainer.precision=32-true", "optim=sgd", "optim.lr=1e6",
                      f"data.local_dir={data_dir}")
    paths = new_project(tmp_path, prepared, cfg)

    result = subprocess.run([sys.executable, "-m", "nmt.stages.train"], cwd=tmp_path, env=stage_env(),
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr

    assert result.returncode == 1, output[-4000:]
    assert f"MEMBER: {WORLD_SIZE}/{WORLD_SIZE}" in output
    assert "training loss is nan at global step" in output
    assert "Traceback" not in result.stderr
    assert not paths.models.exists()
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [run.info.status for run in runs] == ["FAILED"]


def test_killed_ddp_run_resumes(ddp_run, prepared, tmp_path, data_dir):
    """Kill both ranks after a mid-epoch checkpoint; the rerun resumes and ends with the uninterrupted weights."""
    cfg = tiny_config(tmp_path, *DDP_OVERRIDES, "train.checkpoint_every_n_steps=3", f"data.local_dir={data_dir}")
    paths = new_project(tmp_path, prepared, cfg)
    command = [sys.executable, "-m", "nmt.stages.train"]

    process = subprocess.Popen(command, cwd=tmp_path, env=stage_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_mid_epoch_state(paths, process, timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # rank 0 and the rank it launched
        process.wait(timeout=30)
    # Read after the kill: rank 0 may have saved a newer checkpoint while the state was polled.
    state = json.loads(next(paths.checkpoints.glob(f"train-*/{STATE_FILE}")).read_text())

    result = subprocess.run(command, cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output[-4000:]
    assert f"global step {state['global_step']}" in output
    summary = json.loads((paths.models / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == state["global_step"]
    assert summary["steps"] == ddp_run["summary"]["steps"]
    resumed = torch.load(paths.models / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    uninterrupted = torch.load(ddp_run["paths"].models / "last.ckpt", map_location="cpu",
                               weights_only=False)["state_dict"]
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-6, msg=name)
