"""Measure decoding speed: textbook greedy, cached greedy and cached beam search (beam 5) in one run.

Each method translates the same sentences at batch sizes 1 and 64, after one untimed warm-up batch, and
the script prints sentences per second and speedup ratios. It checks that cached and textbook greedy
decoding give the same translations. Results go to the "decode" key of reports/benchmarks.json (other
keys are kept) and to the "Decoding speed" section of reports/benchmarks.md (other sections are kept).

    python benchmarks/decode.py
    python benchmarks/decode.py --checkpoint models/best.ckpt --limit 20     # quick check

Decoding uses the checkpoint's decode.max_len_a and decode.max_len_b and the length penalty given here.
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

from nmt.data.parallel import read_lines
from nmt.decoding import translate
from nmt.decoding.translation import encode_sources
from nmt.tokenizer import load_tokenizers
from nmt.training.module import load_model, selected_checkpoint
from report import update_reports  # benchmarks/report.py, next to this script

log = logging.getLogger("benchmarks.decode")

BATCH_SIZES = (1, 64)
BEAM_SIZE = 5
SECTION_TITLE = "## Decoding speed"
# Method name in reports/benchmarks.json: (beam size, greedy method).
METHODS = {
    "greedy_textbook_sent_per_s": (1, "textbook"),
    "greedy_cached_sent_per_s": (1, "cached"),
    f"beam{BEAM_SIZE}_cached_sent_per_s": (BEAM_SIZE, "cached"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None,
                        help="trained checkpoint (default: the one models/train_summary.json names)")
    parser.add_argument("--tokenizer", default="data/tokenizer",
                        help="tokenizer folder or joint SentencePiece model file (default: data/tokenizer)")
    parser.add_argument("--input", default=None,
                        help="source sentences, one per line (default: data/prepared/test_2016_flickr.<src_lang>)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    parser.add_argument("--length-penalty", type=float, default=1.0, help="GNMT alpha for beam search (default: 1.0)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--reports-dir", default="reports", help="folder of benchmarks.json and benchmarks.md")
    return parser.parse_args()


def time_translation(model, tokenizers, sentences, beam_size, method, batch_size, decode_cfg, alpha):
    """Return (sentences per second, first-best texts) of one timed translation of ``sentences``."""
    kwargs = dict(beam_size=beam_size, method=method, batch_size=batch_size, length_penalty=alpha,
                  max_len_a=decode_cfg["max_len_a"], max_len_b=decode_cfg["max_len_b"])
    translate(model, tokenizers, sentences[:batch_size], **kwargs)          # warm-up, untimed
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    results = translate(model, tokenizers, sentences, **kwargs)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return len(sentences) / seconds, [r[0].text if r else "" for r in results]


def markdown_section(results: dict, setup: dict) -> str:
    rows = [
        "| method | " + " | ".join(f"batch {size}" for size in BATCH_SIZES) + " |",
        "|---|" + "---:|" * len(BATCH_SIZES),
    ]
    for key in METHODS:
        rows.append(f"| {key.removesuffix('_sent_per_s')} | "
                    + " | ".join(f"{results[key][str(size)]:.1f}" for size in BATCH_SIZES) + " |")
    return "\n".join([
        SECTION_TITLE,
        "",
        f"Sentences per second translating {setup['sentences']} sentences of `{setup['input']}` "
        f"with `{setup['checkpoint']}` ({setup['parameters']:,} parameters) on {setup['device']} "
        f"({setup['processor']}, torch threads: {setup['torch_threads']}), torch {setup['torch']}. "
        f"Beam search uses length penalty alpha = {setup['length_penalty']}. The output limit is "
        f"{setup['max_len_a']} * source length + {setup['max_len_b']} pieces, the source length counting its "
        "end token. Measured by `benchmarks/decode.py`.",
        "",
        *rows,
        "",
        f"Cached over textbook greedy: {results['cached_vs_textbook_speedup_b64']:.2f}x at batch 64, "
        f"{setup['cached_vs_textbook_speedup_b1']:.2f}x at batch 1. Cached and textbook greedy translations "
        f"identical: {'yes' if setup['greedy_outputs_identical'] else 'no'}.",
        "",
    ])


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args()
    checkpoint = args.checkpoint or str(selected_checkpoint("models"))
    model, cfg = load_model(checkpoint, map_location=args.device)
    model.to(args.device)
    tokenizers = load_tokenizers(args.tokenizer)
    decode = dict(cfg.get("decode") or {})
    decode_cfg = {"max_len_a": float(decode.get("max_len_a", 1.5)), "max_len_b": int(decode.get("max_len_b", 10))}

    src_lang = (cfg.get("data") or {}).get("src_lang", "en")
    input_path = Path(args.input or f"data/prepared/test_2016_flickr.{src_lang}")
    sentences = read_lines(input_path)[: args.limit]
    log.info("%d sentences from %s", len(sentences), input_path)

    # Show the input warnings (truncation, <unk>) once, not once per timed run.
    encode_sources(tokenizers.source, sentences, model.config.max_positions)
    logging.getLogger("nmt.decoding.translation").setLevel(logging.ERROR)

    results: dict = {key: {} for key in METHODS}
    texts: dict = {}
    for key, (beam_size, method) in METHODS.items():
        for batch_size in BATCH_SIZES:
            speed, texts[key, batch_size] = time_translation(
                model, tokenizers, sentences, beam_size, method, batch_size, decode_cfg, args.length_penalty
            )
            results[key][str(batch_size)] = round(speed, 2)
            log.info("%s, batch %d: %.1f sentences/s", key, batch_size, speed)

    textbook, cached = results["greedy_textbook_sent_per_s"], results["greedy_cached_sent_per_s"]
    results["cached_vs_textbook_speedup_b64"] = round(cached["64"] / textbook["64"], 2)
    identical = all(
        texts["greedy_textbook_sent_per_s", size] == texts["greedy_cached_sent_per_s", size] for size in BATCH_SIZES
    )
    setup = {
        "sentences": len(sentences),
        "input": str(input_path),
        "checkpoint": checkpoint,
        "parameters": model.num_parameters(),
        "device": args.device,
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "length_penalty": args.length_penalty,
        **decode_cfg,
        "cached_vs_textbook_speedup_b1": round(cached["1"] / textbook["1"], 2),
        "greedy_outputs_identical": identical,
    }

    print(f"cached vs textbook greedy speedup: {setup['cached_vs_textbook_speedup_b1']:.2f}x at batch 1, "
          f"{results['cached_vs_textbook_speedup_b64']:.2f}x at batch 64")
    beam_key = f"beam{BEAM_SIZE}_cached_sent_per_s"
    for size in BATCH_SIZES:
        print(f"beam {BEAM_SIZE} vs cached greedy at batch {size}: "
              f"{results[beam_key][str(size)] / cached[str(size)]:.2f}x the speed")
    print(f"cached and textbook greedy translations identical: {'yes' if identical else 'NO'}")

    update_reports(args.reports_dir, {"decode": results, "decode_setup": setup}, markdown_section(results, setup))
    log.info("wrote benchmarks.json and benchmarks.md in %s", args.reports_dir)


if __name__ == "__main__":
    main()
