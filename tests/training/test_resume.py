"""A resumed run keeps the recipe flags it was trained with."""

import pytest

from covid.training.resume import RECIPE_FLAGS, RecipeChangedError, check_same_recipe
from covid.training.train import parse_args

RUN = ["--run", "/tmp/some-run", "--lr", "3e-4", "--stages", "160:94"]


def _recorded(argv: list[str]) -> dict:
    """The options an invocation records (as ``note_invocation`` keeps them)."""
    return {k: str(v) if hasattr(v, "parts") else v for k, v in vars(parse_args(argv)).items()
            if k != "argv"}


def test_the_same_flags_resume_on_another_machine_and_with_another_stage():
    invocations = [{"argv": RUN}, {"argv": RUN, "options": _recorded([*RUN, "--contrast", "none"])}]
    check_same_recipe(invocations, parse_args(
        [*RUN, "--contrast", "none", "--resume", "--backend", "torch", "--precision", "float32",
         "--val-limit", "30", "--cache-dir", "/elsewhere", "--stages", "160:94,224:4"]))


def test_a_recipe_flag_left_out_or_changed_is_refused_naming_each():
    invocations = [{"argv": RUN, "options": _recorded([*RUN, "--contrast", "none"])}]
    with pytest.raises(RecipeChangedError) as refused:
        check_same_recipe(invocations, parse_args([*RUN, "--resume", "--lr", "1e-3"]))
    message = str(refused.value)
    assert "--contrast none (this command: equalise)" in message
    assert "--lr 0.0003 (this command: 0.001)" in message
    assert "--stages" not in message and "/tmp/some-run" in message
    assert isinstance(refused.value, SystemExit)  # one line on stderr, no traceback


def test_a_run_recorded_before_options_were_kept_is_not_judged():
    check_same_recipe([{"argv": RUN}], parse_args([*RUN, "--resume", "--contrast", "none"]))


def test_every_recipe_flag_is_a_trainer_flag():
    options = vars(parse_args(RUN))
    assert set(RECIPE_FLAGS) <= set(options)
