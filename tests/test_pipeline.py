"""End to end: `dvc repro` in a copy of the repository on a tiny model and a data subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import CONF_DIR, REPO, write_params
from nmt.config import compose
from nmt.model import ModelConfig, Transformer
from nmt.tokenizer import load_tokenizers
from nmt.training.module import load_model
from tiny_project import copy_repository, stage_env

TINY_OVERRIDES = [
    "data.max_train_pairs=300",
    "data.max_eval_pairs=12",
    "model=tiny",
    "model.d_model=32",
    "model.n_encoder_layers=1",
    "model.n_decoder_layers=1",
    "model.d_ff=64",
    "tokenizer.vocab_size=400",
    "trainer.max_epochs=2",
    "trainer.precision=32-true",
    "train.max_tokens=400",
    "train.grad_norm_every_n_steps=5",
    "train.log_every_n_steps=5",
    "train.val_samples=3",
    "evaluate.samples=5",
    "decode.max_len_b=5",
    "decode.max_len_a=1.0",
]


def dvc(project: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    result = subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory, data_dir) -> Path:
    """A copy of the repository with a tiny params.yaml, after one `dvc repro`."""
    root = copy_repository(tmp_path_factory.mktemp("project"))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    write_params(root, compose(TINY_OVERRIDES + [f"data.local_dir={data_dir}"], CONF_DIR))
    os.environ.pop("NMT_DATA_DIR", None)
    dvc(root, "repro")
    return root


@pytest.mark.slow
def test_repro_writes_declared_outputs(project):
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for entry in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            assert (project / path).exists(), f"declared output {path} missing"
    assert (project / "models" / "best.ckpt").is_file()
    assert (project / "models" / "last.ckpt").is_file()
    assert (project / "data" / "tokenizer" / "spm.model").is_file()


@pytest.mark.slow
def test_metrics_json_shape(project):
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    for test_set in ("test_2016_flickr", "test_2017_flickr"):
        entry = metrics[test_set]
        assert {"bleu", "chrf", "bleu_signature", "decoding", "sentences", "bleu_lc_tok"} <= set(entry)
        assert isinstance(entry["bleu"], float)
        assert isinstance(entry["chrf"], float)
        assert entry["bleu_signature"].startswith("nrefs:1|case:mixed")
        assert entry["decoding"] == "beam5"
        assert entry["sentences"] == 12
        assert entry["greedy"]["decoding"] == "greedy"
        assert {"bleu", "chrf", "bleu_lc_tok"} <= set(entry["greedy"])
    train = metrics["train"]
    assert set(train) == {"wall_time_s", "epochs", "steps", "best_val_loss", "best_val_bleu", "average_val_bleu",
                          "parameters", "checkpoint"}
    assert train["epochs"] == 2
    assert train["steps"] > 0
    assert train["best_val_loss"] > 0
    assert train["checkpoint"] in ("best.ckpt", "average.ckpt")
    assert 0 <= train["best_val_bleu"] <= 100


@pytest.mark.slow
def test_samples_md_lists_sentences(project):
    text = (project / "reports" / "samples.md").read_text()
    assert text.count("- source: ") == 5
    assert text.count("- reference: ") == 5
    assert text.count("- hypothesis: ") == 5


@pytest.mark.slow
def test_quality_report_records_the_run(project, tmp_path):
    # A recipe that composes to the tiny params of the project, as conf/experiment/*.yaml do for real runs.
    params = yaml.safe_load((project / "params.yaml").read_text())
    recipe = {"defaults": [{"override /model": "tiny"}], "model": {"d_model": params["model"]["d_model"]},
              "trainer": {"max_time_minutes": params["trainer"]["max_time_minutes"]}}
    (project / "conf" / "experiment" / "tiny_check.yaml").write_text("# @package _global_\n" + yaml.safe_dump(recipe))

    wrong = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--experiment", "multi30k_en_de", "--project",
         str(project), "--reports-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert wrong.returncode != 0
    assert "data.name='multi30k_en_fr'" in wrong.stderr
    assert not (tmp_path / "quality.json").exists()

    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "quality.py"), "--experiment", "tiny_check", "--project",
         str(project), "--reports-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "quality.json").read_text())
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    entry = report["multi30k_en_fr"]
    assert entry["experiment"] == "tiny_check"
    for test_set in ("test_2016_flickr", "test_2017_flickr"):
        assert entry[test_set]["bleu_lc_tok"] == metrics[test_set]["bleu_lc_tok"]
        assert entry[test_set]["bleu"] == metrics[test_set]["bleu"]
    assert entry["train_wall_time_s"] > 0
    assert entry["target_met"] is (entry["test_2016_flickr"]["bleu_lc_tok"] >= 62.0)
    markdown = (tmp_path / "quality.md").read_text()
    assert "multi30k_en_fr" in markdown
    assert entry["mlflow_run_id"] in markdown


@pytest.mark.slow
def test_mlflow_run_holds_losses_norms_samples(project):
    summary = json.loads((project / "models" / "train_summary.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db")
    run = client.get_run(summary["mlflow_run_id"])

    assert run.data.params["model.d_model"] == "32"
    assert run.data.tags["stop_reason"] == "max_epochs"
    assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) >= 2
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2
    assert run.data.metrics["test_2016_flickr/bleu"] >= 0.0

    cfg = compose(TINY_OVERRIDES, CONF_DIR)
    model = Transformer(ModelConfig.from_dict(dict(cfg.model), src_vocab_size=400, tgt_vocab_size=400))
    for name in model.named_weights():
        assert client.get_metric_history(run.info.run_id, f"grad_norm/{name}"), f"no gradient norms for {name}"

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "samples.md", "grad_norms.png", "environment.json", "samples"} <= artifacts
    assert {"attention_1.png", "attention_2.png", "attention_3.png"} <= artifacts
    assert run.data.metrics["test_2016_flickr/greedy_bleu"] >= 0.0
    assert run.data.metrics["test_2016_flickr/bleu_lc_tok"] >= 0.0
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert samples == ["samples/epoch_000.txt", "samples/epoch_001.txt"]


@pytest.mark.slow
def test_second_repro_runs_nothing(project):
    output = dvc(project, "repro")
    assert "Running stage" not in output


@pytest.mark.slow
def test_model_change_reruns_train_and_evaluate_only(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["d_ff"] = 48
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    output = dvc(project, "repro")
    assert "Running stage 'train'" in output
    assert "Running stage 'evaluate'" in output
    assert "Running stage 'prepare'" not in output
    assert "Running stage 'tokenizer'" not in output


def pipeline_command(tmp_path: Path, data_dir: Path, *overrides: str) -> list[str]:
    """Return the nmt-pipeline command of a one-epoch tiny job in ``tmp_path/job``, logging to ``tmp_path``."""
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("trainer.max_epochs")]
    return [
        str(Path(sys.executable).parent / "nmt-pipeline"),
        *tiny,
        "trainer.max_epochs=1",
        *overrides,
        f"data.local_dir={data_dir}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"hydra.run.dir={tmp_path / 'job'}",
    ]


@pytest.mark.slow
def test_hydra_pipeline_job(tmp_path, data_dir):
    job_dir = tmp_path / "job"
    result = subprocess.run(pipeline_command(tmp_path, data_dir), cwd=REPO, capture_output=True, text=True,
                            timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((job_dir / "reports" / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 1
    assert (job_dir / "params.yaml").is_file()
    assert (job_dir / "models" / "best.ckpt").is_file()


@pytest.mark.slow
def test_hydra_pipeline_separate_vocabularies(tmp_path, data_dir):
    """tokenizer.joint=false: one SentencePiece model per side, untied embeddings, evaluate and translate."""
    job_dir = tmp_path / "job"
    command = pipeline_command(tmp_path, data_dir, "tokenizer.joint=false", "model.tie_embeddings=false")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    tokenizer_dir = job_dir / "data" / "tokenizer"
    assert sorted(path.name for path in tokenizer_dir.glob("*.model")) == ["spm.src.model", "spm.tgt.model"]
    tokenizers = load_tokenizers(tokenizer_dir)
    model, _ = load_model(job_dir / "models" / "best.ckpt")
    assert model.config.src_vocab_size == tokenizers.source.vocab_size
    assert model.config.tgt_vocab_size == tokenizers.target.vocab_size
    assert model.src_embed is not model.tgt_embed
    # Each model saw one language only: French words are pieces of the target model, not of the source one.
    french = tokenizers.target.sp.encode("les enfants", out_type=str)
    assert len(tokenizers.source.sp.encode("les enfants", out_type=str)) > len(french)
    metrics = json.loads((job_dir / "reports" / "metrics.json").read_text())
    assert metrics["test_2016_flickr"]["bleu"] >= 0.0

    translated = subprocess.run(
        [str(Path(sys.executable).parent / "nmt"), "translate", "--checkpoint", str(job_dir / "models" / "best.ckpt"),
         "--tokenizer", str(tokenizer_dir), "--beam-size", "2", "A dog runs."],
        capture_output=True, text=True, timeout=120,
    )
    assert translated.returncode == 0, translated.stderr[-3000:]
    assert len(translated.stdout.splitlines()) == 1

    joint_file = subprocess.run(
        [str(Path(sys.executable).parent / "nmt"), "translate", "--checkpoint", str(job_dir / "models" / "best.ckpt"),
         "--tokenizer", str(tokenizer_dir / "spm.src.model"), "A dog runs."],
        capture_output=True, text=True, timeout=120,
    )
    assert joint_file.returncode == 1
    assert "was trained with one tokenizer per side" in joint_file.stderr


@pytest.mark.slow
def test_pipeline_ddp_runs_stages_once(tmp_path, data_dir):
    """With trainer=ddp_cpu the second rank reruns the job: it must skip the data stages and evaluate."""
    job_dir = tmp_path / "job"
    store = tmp_path / "mlflow.db"
    command = pipeline_command(tmp_path, data_dir, "trainer=ddp_cpu", "trainer.precision=32-true")
    result = subprocess.run(command, cwd=REPO, env=stage_env(), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr

    assert result.returncode == 0, output[-3000:]
    assert "rank 1: prepare, tokenizer and references were run by rank 0" in output
    assert (job_dir / "reports" / "metrics.json").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    # evaluate logs each test score once; a second evaluating rank would log it twice
    assert len(client.get_metric_history(runs[0].info.run_id, "test_2016_flickr/bleu")) == 1

