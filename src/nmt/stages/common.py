"""Shared set-up of the stage entry points: logging and loading params.yaml."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from nmt.config import ConfigError, Paths, load_params
from nmt.data.multi30k import DataError
from nmt.tracking import TrackingServerError


def run_stage(run: Callable, params_path: str = "params.yaml", errors: tuple[type[Exception], ...] = ()) -> None:
    """Configure logging, load ``params_path`` and call ``run(cfg, Paths(cwd))``.

    On bad config or input, an unreachable MLflow tracking server, and any exception type in ``errors``, log
    the message and exit with status 1.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_params(params_path)
        run(cfg, Paths(Path.cwd()))
    except (ConfigError, DataError, FileNotFoundError, TrackingServerError, *errors) as error:
        logging.getLogger("nmt").error("%s", error)
        sys.exit(1)
