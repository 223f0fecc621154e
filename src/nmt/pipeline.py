"""``nmt-pipeline``: run the DVC stages (prepare, tokenizer, references, train, evaluate) as one Hydra job.

Use it for sweeps outside DVC:

    nmt-pipeline model=tiny optim.lr=0.002                  # one job
    nmt-pipeline -m model=tiny,small                        # a multirun sweep, one job per value
    nmt-pipeline -m hydra/launcher=joblib hydra.launcher.n_jobs=2 model=tiny,small   # two jobs at a time

Config comes from ``conf/`` in the current folder. Each job writes its data, models and reports under its
own Hydra output folder (``outputs/...`` or ``multirun/.../<job number>``) and logs to the MLflow store that
``mlflow.tracking_uri`` names (by default the project's ``mlflow.db``, shared by all jobs).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nmt.config import HYDRA_VERSION_BASE, Paths, check
from nmt.tokenizer import tokenizer_files

log = logging.getLogger(__name__)

CONFIG_DIR = os.path.join(os.getcwd(), "conf")


def require_prepared(paths: Paths, rank: int) -> None:
    """Raise FileNotFoundError unless rank 0 has written the tokenizer that training needs."""
    try:
        tokenizer_files(paths.tokenizer_dir)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"rank {rank}: no tokenizer in {paths.tokenizer_dir}. Start the other ranks after rank 0 has run "
            "prepare, tokenizer and references, or run those stages first (dvc repro references)"
        ) from error


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base=HYDRA_VERSION_BASE)
def main(cfg: DictConfig) -> float:
    """Run the stages in the job's output folder and return test_2016_flickr BLEU (for sweepers)."""
    from nmt.stages import evaluate, prepare, references, tokenizer, train

    check(cfg)
    paths = Paths(Path(HydraConfig.get().runtime.output_dir))
    (paths.root / "params.yaml").write_text(OmegaConf.to_yaml(cfg), encoding="utf-8")

    # With a multi-process trainer (trainer=ddp_cpu), Lightning starts the other ranks by running this job
    # again in the same folder. Rank 0 has prepared the data by then, and it alone evaluates.
    rank = rank_zero_only.rank
    if rank == 0:
        prepare.run(cfg, paths)
        tokenizer.run(cfg, paths)
        references.run(cfg, paths)
    else:
        require_prepared(paths, rank)
        log.info("rank %d: prepare, tokenizer and references were run by rank 0", rank)

    train.run(cfg, paths)
    if rank != 0:
        return float("nan")

    metrics = evaluate.run(cfg, paths)
    first_test_set = cfg.evaluate.test_sets[0]
    log.info("job finished in %s: %s BLEU %.2f", paths.root, first_test_set, metrics[first_test_set]["bleu"])
    return metrics[first_test_set]["bleu"]


if __name__ == "__main__":
    main()
