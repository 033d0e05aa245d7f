"""``python -m covid.train_lungs``: picks the fastest Keras backend, then trains the lung U-Net.

See :mod:`covid.training.train_lungs` for the options, and :mod:`covid.training.backend`
for how the backend and precision are chosen (``--backend auto``, the default).
"""

from covid.training.backend import run_trainer

if __name__ == "__main__":
    run_trainer("covid.train_lungs", "covid.training.train_lungs", "unet", 128)
