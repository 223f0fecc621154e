"""Stage ``evaluate``: decode the test sets with the best checkpoint, score them, report.

Outputs: ``reports/metrics.json`` (DVC metrics) and ``reports/samples.md``. Scores and both files are also
logged into the training run in MLflow.
"""

from __future__ import annotations

import json
import logging
import time

from nmt.config import Paths
from nmt.data.parallel import read_lines
from nmt.decoding import translate_sentences
from nmt.evaluation import score
from nmt.io import write_json_atomic, write_text_atomic
from nmt.stages.common import run_stage
from nmt.tokenizer import Tokenizer
from nmt.tracking import client
from nmt.training.module import load_model

log = logging.getLogger(__name__)


def samples_markdown(test_set: str, sources: list[str], references: list[str], hypotheses: list[str]) -> str:
    lines = [f"# Sample translations ({test_set}, greedy decoding)", ""]
    for number, (src, ref, hyp) in enumerate(zip(sources, references, hypotheses), start=1):
        lines += [f"## {number}", "", f"- source: {src}", f"- reference: {ref}", f"- hypothesis: {hyp}", ""]
    return "\n".join(lines)


def run(cfg, paths: Paths) -> dict:
    summary_path = paths.models / "train_summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; run the train stage first (dvc repro train)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    model, _ = load_model(paths.models / "best.ckpt")
    tokenizer = Tokenizer(paths.tokenizer_model)
    decode = cfg.decode

    metrics, samples = {}, ""
    for test_set in cfg.evaluate.test_sets:
        sources = read_lines(paths.split_file(test_set, cfg.data.src_lang))
        references = read_lines(paths.split_file(test_set, cfg.data.tgt_lang))

        started = time.perf_counter()
        hypotheses = translate_sentences(
            model, tokenizer, sources, decode.batch_size, decode.max_len_a, decode.max_len_b, decode.method
        )
        seconds = time.perf_counter() - started

        result = score(hypotheses, references)
        metrics[test_set] = {**result, "decoding": "greedy"}
        log.info("%s: BLEU %.2f, chrF %.2f (%d sentences decoded in %.1f s)", test_set, result["bleu"],
                 result["chrf"], len(sources), seconds)
        if not samples:
            n = cfg.evaluate.samples
            samples = samples_markdown(test_set, sources[:n], references[:n], hypotheses[:n])

    metrics["train"] = {key: summary[key] for key in ("wall_time_s", "epochs", "steps", "best_val_loss", "parameters")}
    write_json_atomic(paths.reports / "metrics.json", metrics)
    write_text_atomic(paths.reports / "samples.md", samples)

    tracking = client(cfg)
    run_id = summary["mlflow_run_id"]
    for test_set in cfg.evaluate.test_sets:
        for key in ("bleu", "chrf"):
            tracking.log_metric(run_id, f"{test_set}/{key}", metrics[test_set][key])
    tracking.log_artifact(run_id, str(paths.reports / "metrics.json"))
    tracking.log_artifact(run_id, str(paths.reports / "samples.md"))
    return metrics


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
