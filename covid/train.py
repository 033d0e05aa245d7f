"""``python -m covid.train``: entry point kept at the package's top (see :mod:`covid.training.train`)."""

from covid.training.train import main

if __name__ == "__main__":
    main()
