"""``python -m covid``: the command-line tools.

Sub-commands:
    predict  score image files and folders (CSV or JSON on stdout).
    report   write a one-study PDF report (X-ray, Grad-CAM, probabilities, triage).
    explain  write each film's Grad-CAM, lung mask and overlay as PNG files.
    pacs     score the chest radiographs a PACS holds (DICOMweb); optionally send results back.
"""

from __future__ import annotations

import argparse
import sys

from covid import DISCLAIMER
from covid.screening import explain_files, pacs_cli, predict, report


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs a sub-command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m covid", description=DISCLAIMER)
    commands = parser.add_subparsers(dest="command", required=True)
    predict.add_arguments(commands.add_parser("predict", help="score chest X-rays"))
    report.add_arguments(commands.add_parser("report", help="write a one-study PDF report"))
    explain_files.add_arguments(
        commands.add_parser("explain", help="write each film's map, lung mask and overlay")
    )
    pacs_cli.add_arguments(commands.add_parser("pacs", help="score the films a PACS holds"))
    args = parser.parse_args(argv)
    runners = {"predict": predict.run, "report": report.run, "explain": explain_files.run,
               "pacs": pacs_cli.run}
    return runners[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
