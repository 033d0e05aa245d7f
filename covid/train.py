"""``python -m covid.train``: picks the fastest Keras backend, then trains.

See :mod:`covid.training.train` for the options, and :mod:`covid.training.backend`
for how the backend and precision are chosen (``--backend auto``, the default).
"""

import sys

from covid.training.backend import select_backend


def main() -> None:
    """Chooses the backend (re-executing under it), then runs the trainer."""
    select_backend(sys.argv[1:], "covid.train", "resnet50", 160)
    from covid.training.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
