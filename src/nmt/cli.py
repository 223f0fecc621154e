"""The ``nmt`` command: user tasks around a trained or configured model.

Each subcommand lives in ``nmt.commands.<name>`` and provides ``add_parser(subparsers)``, which registers
its arguments and sets ``func`` to the function that runs it. Heavy libraries are imported inside the
subcommands so that ``nmt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

log = logging.getLogger("nmt")

SUBCOMMANDS = ("translate", "gradcheck", "weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmt", description="Transformer translation workbench.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"nmt.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except config_errors() as error:
        # A config the user can fix: one line with the key, value and fix, not a traceback.
        log.error("%s", str(error).strip())
        return 2


def config_errors() -> tuple[type[Exception], ...]:
    """Return the exception types of an invalid config or a missing config folder or group option."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from nmt.config import ConfigError

    return (ConfigError, HydraException, OmegaConfBaseException)


if __name__ == "__main__":
    sys.exit(main())
