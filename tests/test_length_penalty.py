"""The evaluate stage picks the beam's length penalty on the validation split (``evaluate.length_penalty_grid``)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from nmt.data.parallel import read_lines
from nmt.stages import evaluate, train
from nmt.stages import references as references_stage
from nmt.tokenizer import load_tokenizers
from tiny_project import new_project, prepared_folder, tiny_config

pytestmark = pytest.mark.slow

GRID = [0.0, 1.0, 3.0]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, data_dir) -> dict:
    """A trained tiny project evaluated with the grid: its paths, summary, metrics and every decode call.

    The calls are recorded as (number of sentences, beam size, length penalty); the decoding itself is real.
    """
    prepared = prepared_folder(tmp_path_factory, data_dir)
    cfg = tiny_config(prepared, f"data.local_dir={data_dir}", "decode.beam_size=3",
                      f"evaluate.length_penalty_grid=[{','.join(map(str, GRID))}]")
    paths = new_project(tmp_path_factory.mktemp("length-penalty"), prepared)
    summary = train.run(cfg, paths)
    references_stage.run(cfg, paths)

    calls = []
    real_decode = evaluate.decode

    def recorded_decode(model, tokenizers, cfg, sources, beam_size, length_penalty):
        calls.append((len(sources), beam_size, length_penalty))
        return real_decode(model, tokenizers, cfg, sources, beam_size, length_penalty)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate, "decode", recorded_decode)
        metrics = evaluate.run(cfg, paths)
    return {"prepared": prepared, "paths": paths, "summary": summary, "metrics": metrics, "calls": calls}


def test_sweep_covers_grid_in_order(evaluated):
    sweep = evaluated["metrics"]["length_penalty"]["sweep"]
    assert [point["length_penalty"] for point in sweep] == GRID
    assert all(0 <= point["val_bleu"] <= 100 for point in sweep)


def test_selected_alpha_has_best_val_bleu(evaluated):
    sweep = evaluated["metrics"]["length_penalty"]["sweep"]
    best = max(point["val_bleu"] for point in sweep)
    first_best = next(point["length_penalty"] for point in sweep if point["val_bleu"] == best)
    assert evaluated["metrics"]["length_penalty"]["selected"] == first_best


def test_test_sets_use_selected_alpha(evaluated):
    # The validation split and each test set have 8 sentences (data.max_eval_pairs=8).
    metrics = evaluated["metrics"]
    selected = metrics["length_penalty"]["selected"]
    beam_calls = [(n, alpha) for n, beam_size, alpha in evaluated["calls"] if beam_size == 3]
    assert beam_calls == [(8, alpha) for alpha in GRID] + [(8, selected), (8, selected)]
    for test_set in ("test_2016_flickr", "test_2017_flickr"):
        assert metrics[test_set]["length_penalty"] == selected
    written = json.loads((evaluated["paths"].reports / "metrics.json").read_text())
    assert written["length_penalty"] == metrics["length_penalty"]


def test_selection_prefers_higher_val_bleu(evaluated, monkeypatch):
    # Hypotheses made from the references: alpha 1 gives them whole, 0 cuts them in half, 3 adds words.
    paths = evaluated["paths"]
    references = dict(zip(read_lines(paths.split_file("val", "en")), read_lines(paths.split_file("val", "fr"))))

    def fake_decode(model, tokenizers, cfg, sources, beam_size, length_penalty):
        words = [references[source].split() for source in sources]
        if length_penalty == 0.0:
            hypotheses = [" ".join(w[: len(w) // 2]) for w in words]
        elif length_penalty == 1.0:
            hypotheses = [" ".join(w) for w in words]
        else:
            hypotheses = [" ".join(w + ["encore", "une", "fois"]) for w in words]
        return hypotheses, [], 0.0

    monkeypatch.setattr(evaluate, "decode", fake_decode)
    cfg = tiny_config(evaluated["prepared"], "decode.beam_size=3", "evaluate.length_penalty_grid=[0.0,3.0,1.0]")

    # The project's tokenizer is cased, so the sweep scores cased BLEU.
    tokenizers = load_tokenizers(paths.tokenizer_dir)
    selected, sweep = evaluate.tune_length_penalty(None, tokenizers, cfg, paths)

    assert selected == 1.0
    bleu = {point["length_penalty"]: point["val_bleu"] for point in sweep}
    assert bleu[1.0] == pytest.approx(100.0)
    assert bleu[0.0] < bleu[3.0] < bleu[1.0]


def test_selected_alpha_logged_to_mlflow(evaluated):
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluated['prepared']}/mlflow.db")
    history = client.get_metric_history(evaluated["summary"]["mlflow_run_id"], "val/selected_length_penalty")
    assert [point.value for point in history] == [evaluated["metrics"]["length_penalty"]["selected"]]
