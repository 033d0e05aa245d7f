"""``python -m covid.evaluate``: entry point (see :mod:`covid.evaluation.cli`)."""

from covid.evaluation.cli import main

if __name__ == "__main__":
    main()
