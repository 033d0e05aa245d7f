"""``python -m covid.evaluate``: entry point (see :mod:`covid.evaluation.evaluate`)."""

from covid.evaluation.evaluate import main

if __name__ == "__main__":
    main()
