"""The flags several commands share: one name, one meaning, one help text and default each.

Every command that takes a model, a data folder, an output place, a format or a
batch size builds the flag here, so that ``--model`` means the same file with the
same default in ``predict``, ``report``, ``explain``, ``pacs``, ``covid.evaluate``
and ``covid.fit_ood``. The model and data defaults are :func:`covid.settings.settings`'s
when the parser is built: the shipped files beside the package (whatever the
working directory), or the environment variables that override them.

Importing this module imports neither Keras nor TensorFlow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from covid.settings import DATA_ENV, LUNG_MODEL_ENV, MODEL_ENV, OPACITY_MODEL_ENV, settings

FORMATS = ("csv", "json", "table")
"""``--format``'s choices wherever it appears: CSV (text cells guarded against spreadsheet
formulas), a JSON list of rows, or an aligned plain-text table."""


def add_model_flags(parser: argparse.ArgumentParser, *, opacity: bool = True,
                    model_required: bool = False, model_help: str | None = None) -> None:
    """``--model``, ``--lung-model`` and (with ``opacity``) ``--opacity-model``.

    Args:
        parser: The command's parser.
        opacity: Whether the command runs the opacity segmenter.
        model_required: ``--model`` has no default (a command that judges a new model).
        model_help: ``--model``'s help, where the command gives it a role of its own.
    """
    paths = settings()
    if model_required:
        parser.add_argument("--model", type=Path, required=True, metavar="KERAS",
                            help=model_help or "the classifier's .keras file")
    else:
        parser.add_argument("--model", type=Path, default=paths.model_path, metavar="KERAS",
                            help=model_help or f"the classifier (default: ${MODEL_ENV}, else "
                                               "the shipped one)")
    parser.add_argument("--lung-model", type=Path, default=paths.lung_model_path,
                        metavar="KERAS",
                        help=f"the lung segmenter the classifier was trained with (default: "
                             f"${LUNG_MODEL_ENV}, else the shipped one)")
    if opacity:
        parser.add_argument("--opacity-model", type=Path, default=paths.opacity_model_path,
                            metavar="KERAS",
                            help=f"the opacity segmenter, optional: without its file no "
                                 f"opacity figures (default: ${OPACITY_MODEL_ENV}, else the "
                                 "shipped one)")


def add_data(parser: argparse.ArgumentParser) -> None:
    """``--data``: the data folder, where the split record's own is not on this machine."""
    parser.add_argument("--data", type=Path, default=None, metavar="DIR",
                        help="the data folder (default: the split record's, when it is here; "
                             f"else ${DATA_ENV}, else ../shared/data beside the checkout)")


def add_out(parser: argparse.ArgumentParser, help: str, *, metavar: str = "DIR",
            required: bool = False) -> None:
    """``--out``: where the command writes its files.

    Args:
        parser: The command's parser (or argument group).
        help: What is written there.
        metavar: ``DIR`` or the kind of file.
        required: The command has nothing else to write to.
    """
    parser.add_argument("--out", type=Path, required=required, default=None, metavar=metavar,
                        help=help)


def add_format(parser: argparse.ArgumentParser) -> None:
    """``--format``: how rows are printed on stdout (:data:`FORMATS`)."""
    parser.add_argument("--format", choices=FORMATS, default="csv",
                        help="csv (streamed as scored; formula-guarded), json (a list of "
                             "rows) or table (aligned text, printed once all are scored)")


def positive_int(text: str) -> int:
    """The ``--batch-size`` type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_batch_size(parser: argparse.ArgumentParser, default: int) -> None:
    """``--batch-size``: films scored together, in one pass of the networks."""
    parser.add_argument("--batch-size", type=positive_int, default=default, metavar="N",
                        help=f"films scored together in one pass of the networks "
                             f"(default: {default})")
