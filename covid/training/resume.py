"""A resumed run keeps its recipe.

A checkpoint holds weights and optimizer state, not the flags that made them, and a
flag left out of a resuming command takes the code's default. Resumed with another
``--contrast``, a run would go on training (and export its metadata) on inputs
unlike its own, with nothing said. The recipe flags of every invocation are
recorded in the run's state (:func:`covid.training.train.note_invocation`), so a
resuming or exporting command is checked against the last one that recorded them.
"""

from __future__ import annotations

import argparse

RECIPE_FLAGS = ("adult_share", "batch_size", "bn_momentum", "cam_weight", "contrast", "ema",
                "focus", "infection_weight", "label_smoothing", "lr", "max_images",
                "output_stride", "peak_weight", "seed", "steps_per_epoch", "warmup_steps",
                "weight_decay")
"""The options that decide what a run learns, as ``argparse`` names them. The rest may
change between sessions and machines (backend, precision, data and cache folders,
validation size), and ``--stages`` may grow or shrink: a run extended by a stage, or
exported at a later stage's size."""


class RecipeChangedError(SystemExit):
    """A resuming command gives a recipe flag another value than the run was trained with."""


def check_same_recipe(invocations: list[dict], args: argparse.Namespace) -> None:
    """Refuses to resume or export a run under another recipe than its last recorded one.

    Args:
        invocations: The run state's invocations, oldest first (those recorded
            before options were kept have none and are passed over).
        args: The resuming command's parsed flags.

    Raises:
        RecipeChangedError: A recipe flag differs; the message names each one, both
            values, and the command-line flag to give.
    """
    recorded = next((i["options"] for i in reversed(invocations) if "options" in i), None)
    if recorded is None:
        return
    changed = [f"--{key.replace('_', '-')} {recorded[key]} (this command: {getattr(args, key)})"
               for key in RECIPE_FLAGS
               if key in recorded and recorded[key] != getattr(args, key, recorded[key])]
    if changed:
        raise RecipeChangedError(
            f"{args.run} was trained with other recipe flags; give them as it was trained, "
            "or start a new run from its model (--init): " + "; ".join(changed))
