"""Record a finished quality run in reports/quality.json and reports/quality.md, next to its target.

Run it in (or point ``--project`` at) a project folder after ``dvc exp run -S experiment=<name>`` finished:

    python benchmarks/quality.py --experiment multi30k_en_de
    python benchmarks/quality.py --experiment multi30k_en_fr --project ../run_fr --reports-dir reports

It reads the run's reports/metrics.json (test scores), models/train_summary.json (wall time, MLflow run,
selected checkpoint) and params.yaml (the composed config), stores them under the language pair's key of
reports/quality.json (other pairs are kept) and rewrites reports/quality.md from that file.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import yaml

from nmt.io import write_json_atomic, write_text_atomic

log = logging.getLogger("benchmarks.quality")

# bleu_lc_tok targets on test_2016_flickr: the published text-only Transformer baselines (Wu et al., 2021).
TARGETS = {"multi30k_en_de": 41.0, "multi30k_en_fr": 62.0}
TEST_SETS = ("test_2016_flickr", "test_2017_flickr")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="name of the conf/experiment recipe that was run")
    parser.add_argument("--project", default=".", help="folder of the finished run (default: .)")
    parser.add_argument("--reports-dir", default="reports", help="folder of quality.json and quality.md")
    parser.add_argument("--mlflow-store", default=None,
                        help="where the run's MLflow store lives, for the report (default: the run's tracking URI)")
    parser.add_argument("--conditions", default=None,
                        help="how the run was made (threads, other load on the machine), stored with its figures")
    return parser.parse_args()


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path} not found; run the experiment to its end first (dvc exp run -S experiment=...)")
    return json.loads(path.read_text(encoding="utf-8"))


def check_recipe(project: Path, experiment: str, params: dict) -> None:
    """Raise SystemExit unless ``params`` (the finished run's config) is what ``experiment`` composes to."""
    from omegaconf import OmegaConf

    from nmt.config import compose

    expected = OmegaConf.to_container(compose([f"experiment={experiment}"], project / "conf"), resolve=True)
    for group, key in (("data", "name"), ("model", "name"), ("model", "d_model"), ("optim", "lr"),
                       ("optim", "cooldown_fraction"), ("trainer", "max_time_minutes"),
                       ("evaluate", "length_penalty_grid"), ("tokenizer", "lowercase")):
        # A run made before a key was added to conf/ has no such key in its params.yaml, so a missing key is unset.
        run_value, recipe_value = params[group].get(key), expected[group].get(key)
        if bool(run_value) != bool(recipe_value) or (run_value and run_value != recipe_value):
            raise SystemExit(
                f"{project}/params.yaml has {group}.{key}={run_value!r}, but experiment={experiment} sets "
                f"{recipe_value!r}; pass the experiment that produced this run, or rerun it with "
                f"dvc exp run -S experiment={experiment}"
            )


def run_entry(project: Path, experiment: str, mlflow_store: str | None) -> tuple[str, dict]:
    """Return (language pair key, its quality.json entry) of the finished run in ``project``."""
    metrics = read_json(project / "reports" / "metrics.json")
    summary = read_json(project / "models" / "train_summary.json")
    params = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))

    check_recipe(project, experiment, params)

    entry: dict = {}
    for test_set in TEST_SETS:
        scores = metrics.get(test_set)
        if scores is None:
            continue
        entry[test_set] = {"bleu_lc_tok": scores["bleu_lc_tok"], "bleu": scores["bleu"], "chrf": scores["chrf"],
                           "decoding": scores["decoding"]}
        if "greedy" in scores:
            entry[test_set]["greedy"] = {k: scores["greedy"][k] for k in ("bleu_lc_tok", "bleu")}
    entry.update(
        train_wall_time_s=summary["wall_time_s"],
        experiment=experiment,
        mlflow_run_id=summary["mlflow_run_id"],
        mlflow_store=mlflow_store or params["mlflow"]["tracking_uri"],
        checkpoint=summary.get("checkpoint", "best.ckpt"),
        epochs=summary["epochs"],
        steps=summary["steps"],
        stop_reason=summary["stop_reason"],
        best_val_bleu=summary.get("best_val_bleu"),
        average_val_bleu=summary.get("average_val_bleu"),
        config={
            "model": params["model"]["name"],
            "d_model": params["model"]["d_model"],
            "layers": f"{params['model']['n_encoder_layers']}+{params['model']['n_decoder_layers']}",
            "parameters": summary["parameters"],
            "lr": params["optim"]["lr"],
            "warmup_steps": params["optim"]["warmup_steps"],
            "cooldown_fraction": params["optim"].get("cooldown_fraction"),
            "max_tokens": params["train"]["max_tokens"],
            "label_smoothing": params["train"]["label_smoothing"],
            "average_last_n": params["train"]["average_last_n"],
            "precision": params["trainer"]["precision"],
            "max_time_minutes": params["trainer"]["max_time_minutes"],
            "beam_size": params["decode"]["beam_size"],
            "length_penalty": metrics.get("length_penalty", {}).get("selected", params["decode"]["length_penalty"]),
        },
    )
    if params["tokenizer"].get("lowercase"):
        entry["config"]["tokenizer_lowercase"] = True
    if "length_penalty" in metrics:
        entry["length_penalty_sweep"] = metrics["length_penalty"]["sweep"]
    target = TARGETS.get(params["data"]["name"])
    if target is not None and "test_2016_flickr" in entry:
        entry["target_bleu_lc_tok_test_2016"] = target
        entry["target_met"] = entry["test_2016_flickr"]["bleu_lc_tok"] >= target
    return params["data"]["name"], entry


def markdown(report: dict) -> str:
    lines = [
        "# Translation quality",
        "",
        "`bleu_lc_tok`: lowercased, Moses-tokenized BLEU against the official tokenized references, as papers",
        "report it. `bleu`: cased, detokenized sacrebleu. Each run is a `conf/experiment` recipe trained on this",
        "machine's CPU and decoded with beam search; written by `benchmarks/quality.py`.",
        "",
        "| pair | experiment | test_2016 bleu_lc_tok | target | test_2016 bleu | test_2017 bleu_lc_tok "
        "| test_2017 bleu | train time | checkpoint |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for pair, entry in sorted(report.items()):
        t16, t17 = entry.get("test_2016_flickr", {}), entry.get("test_2017_flickr", {})
        target = entry.get("target_bleu_lc_tok_test_2016")
        verdict = "" if target is None else f"{target} ({'met' if entry['target_met'] else 'missed'})"
        lines.append(
            f"| {pair} | `{entry['experiment']}` | {t16.get('bleu_lc_tok', '')} | {verdict} | {t16.get('bleu', '')} "
            f"| {t17.get('bleu_lc_tok', '')} | {t17.get('bleu', '')} | {entry['train_wall_time_s'] / 60:.0f} min "
            f"| `{entry['checkpoint']}` |"
        )
    lines.append("")
    for pair, entry in sorted(report.items()):
        config = ", ".join(f"{key} {value}" for key, value in entry["config"].items())
        greedy = entry.get("test_2016_flickr", {}).get("greedy")
        lines += [
            f"## {pair}",
            "",
            f"- Recipe: `dvc exp run -S experiment={entry['experiment']}` ({config}).",
            f"- Training: {entry['epochs']} complete epochs, {entry['steps']} steps, "
            f"{entry['train_wall_time_s']:.0f} s, "
            f"stopped by {entry['stop_reason']}.",
            f"- Validation BLEU (greedy): best checkpoint {entry['best_val_bleu']}, averaged weights "
            f"{entry['average_val_bleu']}; evaluated `{entry['checkpoint']}`.",
        ]
        if entry["config"].get("tokenizer_lowercase"):
            lines.append("- Trained on lowercased text (`tokenizer.lowercase`): its `bleu` scores lowercase output against "
                         "cased references, so only `bleu_lc_tok` compares with a cased run.")
        if entry.get("length_penalty_sweep"):
            sweep = ", ".join(f"{point['length_penalty']:g}: {point['val_bleu']:.2f}"
                              for point in entry["length_penalty_sweep"])
            lines.append(f"- Length penalty {entry['config']['length_penalty']:g}, chosen by beam BLEU on the "
                         f"validation split ({sweep}).")
        if greedy:
            lines.append(f"- test_2016_flickr greedy: bleu_lc_tok {greedy['bleu_lc_tok']}, bleu {greedy['bleu']}.")
        if entry.get("conditions"):
            lines.append(f"- Conditions: {entry['conditions']}")
        lines += [f"- MLflow run `{entry['mlflow_run_id']}` in {entry['mlflow_store']}.", ""]
    return "\n".join(lines)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args()
    pair, entry = run_entry(Path(args.project), args.experiment, args.mlflow_store)
    if args.conditions:
        entry["conditions"] = args.conditions

    reports = Path(args.reports_dir)
    json_path = reports / "quality.json"
    report = json.loads(json_path.read_text(encoding="utf-8")) if json_path.is_file() else {}
    report[pair] = entry
    write_json_atomic(json_path, report)
    write_text_atomic(reports / "quality.md", markdown(report))
    t16 = entry.get("test_2016_flickr", {})
    print(f"{pair}: test_2016_flickr bleu_lc_tok {t16.get('bleu_lc_tok')} (target "
          f"{entry.get('target_bleu_lc_tok_test_2016')}), bleu {t16.get('bleu')}, "
          f"train {entry['train_wall_time_s']:.0f} s -> {json_path}")


if __name__ == "__main__":
    main()
