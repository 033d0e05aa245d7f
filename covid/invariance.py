r"""``python -m covid.invariance``: does a film's look move a model's decision?

Usage::

    python -m covid.invariance --model RUN/model.keras \
        --compare models/covid_resnet50.keras --per-group 100 --out shifts.json

Scores validation films unaltered and under each alteration of
:data:`covid.evaluation.invariance.ALTERATIONS` (JPEG, gamma, exposure, contrast,
blur, noise), through the serving path, and prints per model and per group of
films (true class, source, age) the mean change of calibrated P(any finding) and
the share sent home, at the model's own temperature and operating point. With
``--contrasts``, it runs no network: it prints how far each alteration moves the
input of ``--model``'s size and focus under each standardisation named, to screen
one before training on it. Writes nothing but ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from covid.evaluation.artefacts import default_split
from covid.evaluation.cli import run_offline_tool
from covid.evaluation.invariance import (
    ALTERATIONS,
    input_changes,
    sample_groups,
    score_altered,
    shifts,
)
from covid.evaluation.scoring import load_scorer, split_side
from covid.flags import add_data, add_model_flags, add_out
from covid.inputs.preprocess import CONTRASTS
from covid.training.catalogue import Catalogue

LOG = logging.getLogger("covid.invariance")


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (its shared flags are :mod:`covid.flags`')."""
    parser = argparse.ArgumentParser(
        prog="python -m covid.invariance",
        description="Does exposure, contrast, gamma, blur, noise or JPEG move a model's "
                    "decision? Validation films, altered before the serving path.")
    add_model_flags(parser, opacity=False)
    parser.add_argument("--compare", type=Path, default=None,
                        help="score this model too, on the same films (e.g. the shipped)")
    parser.add_argument("--split", type=Path, default=None,
                        help="split record (default: the one beside --model)")
    add_data(parser)
    parser.add_argument("--per-group", type=int, default=100,
                        help="validation films per group (true class, source, age)")
    parser.add_argument("--contrasts", type=_contrasts, default=None,
                        help="comma-separated standardisations: measure how far each "
                             f"alteration moves the input under each ({', '.join(CONTRASTS)}); "
                             "no network runs")
    add_out(parser, "the figures as JSON", metavar="JSON")
    return parser


def _contrasts(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(CONTRASTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; expected some of {CONTRASTS}")
    return names


def inputs_markdown(changes: dict) -> str:
    """One table per standardisation: each alteration's mean change of the input, by group."""
    parts = []
    for contrast, figures in changes.items():
        groups = list(next(iter(figures.values())))
        head = "| alteration | " + " | ".join(groups) + " |\n|" + " --- |" * (len(groups) + 1)
        rows = [f"| {name} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |"
                for name, row in figures.items()]
        parts.append(f"### input standardised by `{contrast}`: mean change, grey levels "
                     f"per pixel\n\n{head}\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def markdown(model: str, figures: dict) -> str:
    """Two tables of one model's figures: the change of P(any finding), and the share sent home."""
    groups = list(next(iter(figures.values())))
    head = "| alteration | " + " | ".join(groups) + " |\n|" + " --- |" * (len(groups) + 1)
    first = figures[next(iter(figures))]
    delta = [f"| {name} | " + " | ".join(f"{100 * s.delta_p_finding:+.1f}" for s in row.values())
             + " |" for name, row in figures.items()]
    home = ["| unaltered | " + " | ".join(f"{100 * s.sent_home_unaltered:.1f}%"
                                          for s in first.values()) + " |"]
    home += [f"| {name} | " + " | ".join(f"{100 * s.sent_home:.1f}%" for s in row.values())
             + " |" for name, row in figures.items()]
    counts = ", ".join(f"{g}: {s.n}" for g, s in first.items())
    return (f"### {model}\n\nFilms: {counts}.\n\nMean change of P(any finding), points:\n\n"
            f"{head}\n" + "\n".join(delta) + "\n\nSent home:\n\n" + f"{head}\n"
            + "\n".join(home) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point.

    Raises:
        SystemExit: 1 when a model cannot be loaded (missing, altered, or not
            trained with that lung segmenter).
    """
    run_offline_tool(_run, build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> None:
    record = json.loads((args.split or default_split(args.model)).read_text())
    films = sample_groups(split_side(record, "val", args.data), args.per_group)
    if args.contrasts:
        _screen_inputs(args, films)
        return
    paths = [args.model] + ([args.compare] if args.compare else [])
    loaded = [load_scorer(path, args.lung_model) for path in paths]
    LOG.info("%d validation films, %d alterations, %d model(s)", len(films.names),
             len(ALTERATIONS), len(paths))
    logits = score_altered([c for c, _ in loaded], loaded[0][1], films, ALTERATIONS)
    report = {}
    for path, (classifier, _), per_model in zip(paths, loaded, logits, strict=True):
        meta = classifier.metadata
        figures = shifts(per_model, films, meta.class_names, meta.temperature, meta.threshold)
        name = f"{meta.name} v{meta.version} ({path})"
        print(markdown(name, figures))
        report[name] = {"sha256": meta.sha256, "threshold": meta.threshold,
                        "temperature": meta.temperature,
                        "alterations": {a: {g: asdict(s) for g, s in row.items()}
                                        for a, row in figures.items()}}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


def _screen_inputs(args: argparse.Namespace, films: Catalogue) -> None:
    """``--contrasts``: the inputs' changes at ``--model``'s size and focus, no network."""
    classifier, segmenter = load_scorer(args.model, args.lung_model)
    meta = classifier.metadata
    LOG.info("%d validation films, %d alterations, inputs only", len(films.names),
             len(ALTERATIONS))
    changes = input_changes(segmenter, films, ALTERATIONS, args.contrasts, meta.input_size,
                            meta.input_mode)
    print(inputs_markdown(changes))
    if args.out:
        args.out.write_text(json.dumps({"input_changes": changes}, indent=1))


if __name__ == "__main__":
    main()
