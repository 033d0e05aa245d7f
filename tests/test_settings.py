"""The settings object: defaults found from any working directory, variables honoured."""

from __future__ import annotations

from pathlib import Path

from covid.settings import (
    DATA_ENV,
    LUNG_MODEL_ENV,
    MODEL_ENV,
    OPACITY_MODEL_ENV,
    PROJECT_ROOT,
    settings,
)


def test_defaults_are_the_shipped_files_whatever_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = settings({})
    assert found.model_path == PROJECT_ROOT / "models" / "covid_resnet50.keras"
    assert found.model_path.is_absolute() and found.model_path.is_file()
    assert found.lung_model_path.is_file()
    assert found.opacity_model_path.is_file()
    assert found.data_dir == PROJECT_ROOT.parent / "shared" / "data"


def test_each_variable_overrides_its_own_path_only():
    env = {MODEL_ENV: "a.keras", LUNG_MODEL_ENV: "", OPACITY_MODEL_ENV: "/x/o.keras",
           DATA_ENV: "/data"}
    found = settings(env)
    assert found.model_path == Path("a.keras")
    assert found.lung_model_path == settings({}).lung_model_path  # empty means unset
    assert found.opacity_model_path == Path("/x/o.keras")
    assert found.data_dir == Path("/data")


def test_reads_the_process_environment_when_called(monkeypatch):
    monkeypatch.setenv(MODEL_ENV, "/tmp/other.keras")
    assert settings().model_path == Path("/tmp/other.keras")
    monkeypatch.delenv(MODEL_ENV)
    assert settings().model_path.name == "covid_resnet50.keras"
