"""Every command's flags: one name per meaning, the same choices and the settings' defaults."""

import argparse

import pytest

from covid import invariance
from covid.evaluation import cli, ood_fit
from covid.flags import FORMATS
from covid.screening import explain_files, pacs_cli, predict, report
from covid.settings import LUNG_MODEL_ENV, MODEL_ENV, OPACITY_MODEL_ENV, settings


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Each command's parser, built now (so from the environment as it is now)."""
    commands = {}
    for name, module in (("predict", predict), ("report", report), ("explain", explain_files),
                         ("pacs", pacs_cli)):
        commands[name] = argparse.ArgumentParser(prog=f"python -m covid {name}")
        module.add_arguments(commands[name])
    commands["covid.evaluate"] = cli.build_parser()
    commands["covid.fit_ood"] = ood_fit.build_parser()
    commands["covid.invariance"] = invariance.build_parser()
    return commands


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


def test_no_command_uses_a_second_name_for_a_shared_meaning():
    for name, parser in _parsers().items():
        flags = _options(parser)
        for other in ("-o", "--output", "--data-root", "--data-dir", "--lungs", "--fmt"):
            assert other not in flags, f"{name} has {other}"


def test_format_offers_the_same_choices_wherever_it_appears():
    with_format = {name for name, parser in _parsers().items() if "--format" in _options(parser)}
    assert with_format == {"predict", "pacs"}
    for name in with_format:
        assert tuple(_options(_parsers()[name])["--format"].choices) == FORMATS, name


def test_out_and_data_are_the_names_where_a_command_writes_or_reads_a_folder():
    parsers = _parsers()
    for name in ("predict", "report", "explain", "covid.invariance"):
        assert "--out" in _options(parsers[name]), name
    for name in ("covid.evaluate", "covid.fit_ood", "covid.invariance"):
        assert "--data" in _options(parsers[name]), name


def test_model_defaults_come_from_the_settings_and_follow_the_environment(tmp_path,
                                                                          monkeypatch):
    for variable in (MODEL_ENV, LUNG_MODEL_ENV, OPACITY_MODEL_ENV):
        monkeypatch.delenv(variable, raising=False)
    shipped = settings()
    for name, parser in _parsers().items():
        flags = _options(parser)
        assert flags["--lung-model"].default == shipped.lung_model_path, name
        assert shipped.lung_model_path.is_absolute()
        if not flags["--model"].required:  # evaluate judges a candidate it must be given
            assert flags["--model"].default == shipped.model_path, name
        if "--opacity-model" in flags:
            assert flags["--opacity-model"].default == shipped.opacity_model_path, name
    monkeypatch.setenv(MODEL_ENV, str(tmp_path / "mine.keras"))
    monkeypatch.setenv(OPACITY_MODEL_ENV, str(tmp_path / "opacity.keras"))
    for name in ("predict", "report", "explain", "pacs", "covid.fit_ood"):
        flags = _options(_parsers()[name])
        assert flags["--model"].default == tmp_path / "mine.keras", name
    assert _options(_parsers()["report"])["--opacity-model"].default == tmp_path / "opacity.keras"


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_batch_size_must_be_a_positive_whole_number(value):
    parser = _parsers()["predict"]
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["a.png", "--batch-size", value])
    assert exc.value.code == 2
