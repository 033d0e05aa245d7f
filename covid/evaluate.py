"""``python -m covid.evaluate``: entry point (see :mod:`covid.training.evaluate`)."""

from covid.training.evaluate import main

if __name__ == "__main__":
    main()
