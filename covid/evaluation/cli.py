r"""``python -m covid.evaluate``: evaluate a trained model, and ship it if it loses nothing.

Usage::

    python -m covid.evaluate --model RUN/model.keras \
        --compare models/covid_resnet50.keras --ship models/covid_resnet50.keras

Evaluation (:mod:`covid.evaluation.evaluate`) writes the model's calibrated
metadata and the artefacts the model page shows; ``--ship`` copies the model to
the shipped location only if the ship gate passes (:mod:`covid.evaluation.ship`),
and exits 1 listing every figure lost otherwise. ``--val-only`` prints validation
figures to compare candidates (with ``--layer``, a Grad-CAM layer to try) and
writes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

from covid.evaluation.evaluate import evaluate
from covid.evaluation.scoring import Options, validation_figures
from covid.evaluation.ship import set_gradcam_layer, ship
from covid.flags import add_data, add_model_flags
from covid.model.metadata import ModelFileError
from covid.settings import settings

LOG = logging.getLogger("covid.evaluate")


def run_offline_tool(run: Callable[[argparse.Namespace], None], args: argparse.Namespace) -> None:
    """Runs an evaluation tool (``covid.evaluate``, ``covid.invariance``): timed log lines.

    Args:
        run: The tool's body.
        args: Its parsed flags.

    Raises:
        SystemExit: 1, with one line naming the file and the reason (no traceback),
            when a model cannot be loaded (missing, altered, or not trained with
            that lung segmenter).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        run(args)
    except ModelFileError as err:
        raise SystemExit(f"error: {err}") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parses the command line (see the module docstring)."""
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (its shared flags are :mod:`covid.flags`')."""
    parser = argparse.ArgumentParser(
        prog="python -m covid.evaluate",
        description="Evaluate a trained model, and ship it if it loses nothing on validation.")
    # --model has no default: the shipped model is what a candidate is judged against.
    add_model_flags(parser, opacity=False, model_required=True,
                    model_help="the trained model to evaluate (RUN/model.keras)")
    parser.add_argument("--split", type=Path, default=None,
                        help="split record (default: split.json beside the model)")
    add_data(parser)
    parser.add_argument("--masks", type=Path, default=None,
                        help="COVID-QU-Ex folder (default: in the data folder)")
    parser.add_argument("--compare", type=Path, default=None,
                        help="score this model too, on the same test films (e.g. the shipped)")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path.home() / ".cache" / "covid-runs" / "cache",
                        help="segmentations and hashes kept between runs")
    parser.add_argument("--ship", type=Path, default=None,
                        help="then copy the model and its artefacts here if it loses no "
                             "headline figure beyond its 95%% CI against the model there, on "
                             "validation (covid.evaluation.comparison)")
    parser.add_argument("--val-only", action="store_true",
                        help="print validation figures to compare candidates; write nothing")
    parser.add_argument("--val-limit", type=int, default=0, help="with --val-only: films/class")
    parser.add_argument("--layer", default=None,
                        help="record this layer as the model's Grad-CAM layer first; with "
                             "--val-only, only try it (to compare layers on validation)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point.

    Raises:
        SystemExit: 1 when ``--ship`` is refused by the gate or a model cannot be
            loaded (missing, altered, or not trained with that lung segmenter); a
            message for a missing layer.
    """
    run_offline_tool(_run, parse_args(argv))


def _run(args: argparse.Namespace) -> None:
    """Evaluates (and ships, or only tries on validation) as the flags say."""
    split = args.split or args.model.parent / "split.json"
    masks = args.masks or (args.data or settings().data_dir) / "covid-qu-ex-masks"
    opts = Options(split, args.data, masks if masks.is_dir() else None, args.lung_model,
                   args.compare, args.cache_dir, args.ship)
    if args.val_only:
        figures = validation_figures(args.model, opts, args.val_limit, layer=args.layer)
        print(json.dumps(figures, indent=1))
        return
    if args.layer:
        set_gradcam_layer(args.model, args.layer)
    metrics = evaluate(args.model, opts)
    print(json.dumps(metrics, indent=1, default=str))
    if args.ship:
        verdict = metrics["ship_gate"]
        if not verdict["ship"]:
            LOG.warning("not shipped: the candidate loses what the shipped model had on "
                        "validation:\n- %s", "\n- ".join(verdict["reasons"]))
            raise SystemExit(1)
        ship(args.model, args.ship)
        LOG.info("shipped to %s. %s", args.ship, verdict["summary"])
