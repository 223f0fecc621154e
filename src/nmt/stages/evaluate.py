"""Stage ``evaluate``: decode the test sets with the checkpoint that training selected, score them, report.

Each test set is decoded twice: with beam search (``decode.beam_size``, the primary result) and greedily.
With ``evaluate.length_penalty_grid`` set, beam search uses the value of that grid with the highest BLEU on
the validation split in place of ``decode.length_penalty``. A model trained on lowercased text
(``tokenizer.lowercase``) writes lowercase hypotheses. Their ``bleu`` and ``chrf`` are still scored against
the cased references, so only ``bleu_lc_tok`` compares with a cased model, and metrics.json then contains
``"tokenizer_lowercase": true``.
Outputs: ``reports/metrics.json`` (DVC metrics), ``reports/samples.md`` and ``reports/attention_<n>.png``
(encoder-decoder attention of a few test sentences), written to temporary names and renamed together once
every test set is scored. Scores and the files are also logged into the training run in MLflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

import torch

from nmt.config import Paths
from nmt.data.parallel import check_aligned, read_lines
from nmt.decoding import translate
from nmt.evaluation import paper_bleu, score
from nmt.io import atomic_path
from nmt.plots import plot_cross_attention
from nmt.stages.common import run_stage
from nmt.stages.references import references_dir
from nmt.tokenizer import BOS_ID, EOS_ID, TokenizerPair, load_tokenizers
from nmt.tracking import client
from nmt.training.module import load_model, selected_checkpoint

log = logging.getLogger(__name__)

ATTENTION_PLOTS = 3


def decoding_name(beam_size: int) -> str:
    return "greedy" if beam_size == 1 else f"beam{beam_size}"


def samples_markdown(
    test_set: str, decoding: str, sources: list[str], references: list[str], hypotheses: list[str]
) -> str:
    lines = [f"# Sample translations ({test_set}, {decoding} decoding)", ""]
    for number, (src, ref, hyp) in enumerate(zip(sources, references, hypotheses), start=1):
        lines += [f"## {number}", "", f"- source: {src}", f"- reference: {ref}", f"- hypothesis: {hyp}", ""]
    return "\n".join(lines)


def decode(model, tokenizers, cfg, sources: list[str], beam_size: int, length_penalty: float) -> tuple:
    """Translate ``sources`` with ``beam_size`` (1 = greedy) and return (hypotheses, output ids, seconds)."""
    options = cfg.decode
    started = time.perf_counter()
    translations = translate(
        model, tokenizers, sources, beam_size=beam_size, length_penalty=length_penalty,
        batch_size=options.batch_size, max_len_a=options.max_len_a, max_len_b=options.max_len_b,
        method=options.method,
    )
    seconds = time.perf_counter() - started
    hypotheses = [best[0].text if best else "" for best in translations]
    output_ids = [best[0].tokens if best else [] for best in translations]
    return hypotheses, output_ids, seconds


def decode_and_score(model, tokenizers, cfg, sources, references, tokenized_references, beam_size: int,
                     length_penalty: float) -> tuple:
    """Translate ``sources`` with ``beam_size`` (1 = greedy) and return (scores, hypotheses, output ids, seconds)."""
    hypotheses, output_ids, seconds = decode(model, tokenizers, cfg, sources, beam_size, length_penalty)

    result = score(hypotheses, references)
    result["bleu_lc_tok"] = paper_bleu(hypotheses, tokenized_references, cfg.data.tgt_lang)
    result["decoding"] = decoding_name(beam_size)
    if beam_size > 1:
        result["length_penalty"] = length_penalty
    return result, hypotheses, output_ids, seconds


def tune_length_penalty(model, tokenizers, cfg, paths: Paths) -> tuple[float, list[dict]]:
    """Beam-decode the validation split with each alpha of ``evaluate.length_penalty_grid``.

    Returns the alpha with the highest BLEU (a tie goes to the one listed first) and the sweep as
    ``[{"length_penalty": alpha, "val_bleu": bleu}, ...]`` in grid order. A model trained on lowercased text
    is scored with lowercased BLEU.
    """
    src_path = paths.split_file("val", cfg.data.src_lang)
    ref_path = paths.split_file("val", cfg.data.tgt_lang)
    sources = read_lines(src_path)
    references = read_lines(ref_path)
    check_aligned("reading val", sources, references, (str(src_path), str(ref_path)))

    sweep = []
    for alpha in cfg.evaluate.length_penalty_grid:
        hypotheses, _, seconds = decode(model, tokenizers, cfg, sources, cfg.decode.beam_size, alpha)
        bleu = score(hypotheses, references, lowercase=tokenizers.lowercase)["bleu"]
        log.info("val, beam%d, length penalty %g: BLEU %.2f (%.1f s)", cfg.decode.beam_size, alpha, bleu, seconds)
        sweep.append({"length_penalty": float(alpha), "val_bleu": bleu})

    best = max(sweep, key=lambda point: point["val_bleu"])
    return best["length_penalty"], sweep


@torch.inference_mode()
def cross_attention(model, tokenizers: TokenizerPair, source: str,
                    output_ids: list[int]) -> tuple[list, list[str], list[str]]:
    """Return per-layer encoder-decoder attention (heads, outputs, sources) for one translated sentence."""
    src_ids = tokenizers.source.encode([source])[0][: model.config.max_positions - 1] + [EOS_ID]
    output_ids = output_ids[: model.config.max_positions - 1]
    memory, src_key_padding_mask = model.encode(torch.tensor([src_ids]))
    tgt_in = torch.tensor([[BOS_ID] + output_ids[:-1]])
    _, weights = model.decode(tgt_in, memory, src_key_padding_mask, need_weights=True)
    return ([w[0].float().numpy() for w in weights], tokenizers.source.pieces(src_ids),
            tokenizers.target.pieces(output_ids))


def run(cfg, paths: Paths) -> dict:
    summary_path = paths.models / "train_summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found; run the train stage first (dvc repro train)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    checkpoint = selected_checkpoint(paths.models)
    log.info("evaluating %s", checkpoint)
    model, _ = load_model(checkpoint)
    tokenizers = load_tokenizers(paths.tokenizer_dir)
    beam_size = cfg.decode.beam_size

    metrics, samples, attention_inputs = {}, "", []
    if tokenizers.lowercase:
        metrics["tokenizer_lowercase"] = True
        log.info("the tokenizer lowercases its input, so the hypotheses are lowercase. Cased BLEU and chrF score "
                 "them against cased references, so compare models by bleu_lc_tok")
    length_penalty = cfg.decode.length_penalty
    if cfg.evaluate.get("length_penalty_grid"):
        length_penalty, sweep = tune_length_penalty(model, tokenizers, cfg, paths)
        metrics["length_penalty"] = {"selected": length_penalty, "sweep": sweep}
        log.info("decoding the test sets with length penalty %g, the grid's best on validation", length_penalty)

    for test_set in cfg.evaluate.test_sets:
        src_path = paths.split_file(test_set, cfg.data.src_lang)
        ref_path = paths.split_file(test_set, cfg.data.tgt_lang)
        sources = read_lines(src_path)
        references = read_lines(ref_path)
        check_aligned(f"reading {test_set}", sources, references, (str(src_path), str(ref_path)))
        # A data subset (data.max_eval_pairs) keeps the first lines of each split.
        tokenized_references = read_lines(references_dir(paths) / f"{test_set}.{cfg.data.tgt_lang}")[: len(sources)]

        primary, hypotheses, output_ids, seconds = decode_and_score(
            model, tokenizers, cfg, sources, references, tokenized_references, beam_size, length_penalty
        )
        check_aligned(f"translating {test_set}", sources, hypotheses, (str(src_path), "the hypotheses"))
        metrics[test_set] = primary
        log.info("%s, %s: BLEU %.2f, chrF %.2f, lowercased tokenized BLEU %.2f (%d sentences in %.1f s)", test_set,
                 primary["decoding"], primary["bleu"], primary["chrf"], primary["bleu_lc_tok"], len(sources), seconds)
        if beam_size > 1:
            greedy, _, _, seconds = decode_and_score(
                model, tokenizers, cfg, sources, references, tokenized_references, 1, length_penalty
            )
            metrics[test_set]["greedy"] = {k: greedy[k] for k in ("bleu", "chrf", "bleu_lc_tok", "decoding")}
            log.info("%s, greedy: BLEU %.2f, chrF %.2f, lowercased tokenized BLEU %.2f (%.1f s)", test_set,
                     greedy["bleu"], greedy["chrf"], greedy["bleu_lc_tok"], seconds)

        if not samples:
            n = cfg.evaluate.samples
            samples = samples_markdown(test_set, primary["decoding"], sources[:n], references[:n], hypotheses[:n])
            attention_inputs = [(sources[i], output_ids[i]) for i in range(min(ATTENTION_PLOTS, len(sources)))]

    train_keys = ("wall_time_s", "epochs", "steps", "best_val_loss", "best_val_bleu", "average_val_bleu",
                  "parameters", "checkpoint")
    metrics["train"] = {key: summary[key] for key in train_keys if summary.get(key) is not None}
    attention_paths = [paths.reports / f"attention_{n}.png" for n in range(1, len(attention_inputs) + 1)]
    with contextlib.ExitStack() as stack:
        metrics_file = stack.enter_context(atomic_path(paths.reports / "metrics.json"))
        samples_file = stack.enter_context(atomic_path(paths.reports / "samples.md"))
        metrics_file.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        samples_file.write_text(samples, encoding="utf-8")
        for number, (path, (source, ids)) in enumerate(zip(attention_paths, attention_inputs), start=1):
            weights, source_pieces, output_pieces = cross_attention(model, tokenizers, source, ids)
            plot_cross_attention(weights, source_pieces, output_pieces, stack.enter_context(atomic_path(path)),
                                 title=f"test sentence {number}: {source}")

    tracking = client(cfg)
    run_id = summary["mlflow_run_id"]
    for test_set in cfg.evaluate.test_sets:
        for key in ("bleu", "chrf", "bleu_lc_tok"):
            tracking.log_metric(run_id, f"{test_set}/{key}", metrics[test_set][key])
            if "greedy" in metrics[test_set]:
                tracking.log_metric(run_id, f"{test_set}/greedy_{key}", metrics[test_set]["greedy"][key])
    if "length_penalty" in metrics:
        tracking.log_metric(run_id, "val/selected_length_penalty", metrics["length_penalty"]["selected"])
    for path in [paths.reports / "metrics.json", paths.reports / "samples.md", *attention_paths]:
        tracking.log_artifact(run_id, str(path))
    return metrics


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
