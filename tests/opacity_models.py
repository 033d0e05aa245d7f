"""Tiny opacity segmenters for the screening and page tests, saved at run time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TINY_OPACITY_SIZE = 32
"""The tiny segmenter's input side."""


def save_tiny_opacity(path: Path, everywhere: bool = True) -> Path:
    """Saves a tiny opacity U-Net (``.keras`` + metadata with its SHA-256) to ``path``.

    Args:
        path: The ``.keras`` file to write.
        everywhere: True: its last layer outputs ~1 at every pixel, so the opacity
            is the whole of the lung fields (each lung 100%, score 8/8); False:
            ~0 everywhere (no opacity, score 0/8).

    Returns:
        ``path``.
    """
    import keras

    from covid.model.opacity import OpacityModelMetadata, build_opacity_unet, save_opacity_model

    keras.utils.set_random_seed(0)
    model = build_opacity_unet(None, filters=(4, 8))
    last = model.get_layer("opacity")
    kernel, bias = last.get_weights()
    last.set_weights([np.zeros_like(kernel), np.full_like(bias, 20.0 if everywhere else -20.0)])
    save_opacity_model(model, OpacityModelMetadata(input_size=TINY_OPACITY_SIZE), path)
    return path
