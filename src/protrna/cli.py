"""The ``protrna`` command line: a thin layer over the jobs, which are callable from Python too.

Each job module defines ``add_parser(subparsers)``, which registers its sub-command and sets
``func`` (taking the parsed arguments) as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__

# Sub-command modules, in the order ``protrna --help`` lists them.
COMMAND_MODULES = (
    "protrna.embed",
    "protrna.fold",
    "protrna.evaluate",
    "protrna.score",
    "protrna.data.rnabench",
    "protrna.weights.cli",
    "protrna.train.pretrain",
    "protrna.train.ss",
    "protrna.train.finetune",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="protrna",
        description="ProtRNA: an RNA language model transferred from ESM-2, in PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"protrna {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


class ProgressAwareHandler(logging.Handler):
    """Writes log records to standard error through ``tqdm.write``, which lifts any progress bar
    on that stream off its line, prints the record on a line of its own and draws the bar again.
    A plain stream handler would append the record to the half-drawn bar's line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            from tqdm import tqdm

            # sys.stderr at the time of writing: a test's capture or a redirection in between counts.
            tqdm.write(message, file=sys.stderr)
        except Exception:  # noqa: BLE001  (logging's own convention: report, never raise)
            self.handleError(record)


def setup_logging(verbose: bool) -> None:
    """Route logging to standard error past the progress bars, once. As ``logging.basicConfig``,
    it leaves a root logger that already has handlers (an embedding application's, pytest's) alone."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = ProgressAwareHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    # Jobs show their own progress; transformers' per-file loading/saving bars are noise here.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, ImportError) as error:
        # Input problems and missing optional extras get one clear line, not a traceback;
        # --verbose shows the traceback.
        if args.verbose:
            raise
        _say(f"protrna {args.command}: error: {error}")
        return 2
    except KeyboardInterrupt:
        _say(f"protrna {args.command}: interrupted")
        return 130


def _say(message: str) -> None:
    """One line on standard error, below any progress bar a failed job left half drawn."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
