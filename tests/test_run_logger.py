"""The logger of a resumed run skips the metric steps that the MLflow run already contains (real sqlite store)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from nmt.training.run_logger import ResumedMLFlowLogger


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((point.step, point.value) for point in client.get_metric_history(run_id, key))


def test_resumed_logger_skips_logged_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("resume")
    run_id = client.create_run(experiment_id).info.run_id
    # The interrupted process logged train/loss up to step 12 and val/loss at step 9.
    for step in (4, 8, 12):
        client.log_metric(run_id, "train/loss", 10.0 - step, step=step)
    client.log_metric(run_id, "val/loss", 5.0, step=9)

    logger = ResumedMLFlowLogger(experiment_name="resume", tracking_uri=uri, run_id=run_id)
    # The resumed process restarts at step 10, logs step 12 again, then the new step 16.
    logger.log_metrics({"train/loss": -1.0, "val/loss": 4.0, "grad_norm/output.W_out": 0.5}, step=12)
    logger.log_metrics({"train/loss": -6.0}, step=16)

    assert history(client, run_id, "train/loss") == [(4, 6.0), (8, 2.0), (12, -2.0), (16, -6.0)]
    assert history(client, run_id, "val/loss") == [(9, 5.0), (12, 4.0)]
    assert history(client, run_id, "grad_norm/output.W_out") == [(12, 0.5)]
