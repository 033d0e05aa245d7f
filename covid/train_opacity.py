"""``python -m covid.train_opacity``: picks the fastest Keras backend, trains the opacity U-Net.

See :mod:`covid.training.train_opacity` for the options, and :mod:`covid.training.backend`
for how the backend and precision are chosen (``--backend auto``, the default).
"""

from covid.training.backend import run_trainer

if __name__ == "__main__":
    run_trainer("covid.train_opacity", "covid.training.train_opacity", "unet", 128)
