"""``python -m covid``: the command-line tools.

Sub-commands:
    predict  score image files and folders (CSV or JSON on stdout).
    report   write a one-study PDF report (X-ray, Grad-CAM, probabilities, triage).
"""

from __future__ import annotations

import argparse
import sys

from covid import DISCLAIMER
from covid.screening import predict, report


def main(argv: list[str] | None = None) -> int:
    """Parses the command line and runs a sub-command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m covid", description=DISCLAIMER)
    commands = parser.add_subparsers(dest="command", required=True)
    predict.add_arguments(commands.add_parser("predict", help="score chest X-rays"))
    report.add_arguments(commands.add_parser("report", help="write a one-study PDF report"))
    args = parser.parse_args(argv)
    runners = {"predict": predict.run, "report": report.run}
    return runners[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
