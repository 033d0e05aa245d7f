"""``python -m covid``: the command-line tools.

Sub-commands:
    predict  score image files and folders (CSV or JSON on stdout).
    report   write a one-study PDF report (X-ray, Grad-CAM, probabilities, triage).
    explain  write each film's Grad-CAM, lung mask and overlay as PNG files.
    pacs     score the chest radiographs a PACS holds (DICOMweb); optionally send results back.

Only the chosen sub-command's module is imported: each of the others brings
TensorFlow in (about 5 s of one core), and ``predict --engine ray``'s driver
needs none of it (its actors import it themselves).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from covid import DISCLAIMER

COMMANDS = {
    "predict": ("covid.screening.predict", "score chest X-rays"),
    "report": ("covid.screening.report", "write a one-study PDF report"),
    "explain": ("covid.screening.explain_files", "write each film's map, lung mask and overlay"),
    "pacs": ("covid.screening.pacs_cli", "score the films a PACS holds"),
}
"""Each sub-command's module (with ``add_arguments(parser)`` and ``run(args)``) and help."""


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs a sub-command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    # The top-level parser takes no option but --help, so the first word is the command.
    chosen = next((word for word in argv if not word.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="python -m covid", description=DISCLAIMER)
    commands = parser.add_subparsers(dest="command", required=True)
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
    args = parser.parse_args(argv)
    assert module is not None  # parse_args accepted a command, so it is the one chosen
    return module.run(args)


if __name__ == "__main__":
    sys.exit(main())
