"""What both pages show: the disclaimer, a model that cannot be loaded, small tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from covid import DISCLAIMER
from covid.app import state
from covid.app.resources import load_model
from covid.model.decision import finding_name
from covid.model.metadata import ModelFileError, ModelMetadata

if TYPE_CHECKING:
    from covid.explain.inference import Classifier

TRAIN_HOWTO = """\
Train a model, then evaluate and ship it, from the project's root:

```bash
python -m covid.train --run runs/main
python -m covid.evaluate --model runs/main/model.keras --ship models/covid_resnet50.keras
```

Or point the page at another model: `COVID_MODEL_PATH=path/to/model.keras streamlit run \
streamlit_app.py` (its metadata JSON must sit beside it).
"""


def disclaimer_ui() -> None:
    """The research-tool disclaimer."""
    st.warning(
        f"**{DISCLAIMER}** Do not use it to make clinical decisions.", icon=":material/warning:"
    )


def model_error_ui(err: Exception, path: Path) -> None:
    """Explains, without a traceback, that no usable model is available."""
    st.error(f"No usable model at `{path}`: {err}", icon=":material/error:")
    st.info(TRAIN_HOWTO, icon=":material/info:")


def load_or_explain(path: Path) -> tuple[Classifier, Any] | None:
    """The cached classifier and detector, or None after explaining why not.

    The loaders show no spinner of their own (the server's preload calls them
    outside any page), so the spinner is shown here while they load.
    """
    try:
        with st.spinner("Loading the model…"):
            return load_model(path)
    except ModelFileError as err:
        model_error_ui(err, path)
        return None


def operating_point_words(meta: ModelMetadata, threshold: float) -> str:
    """E.g. "P(any finding) ≥ 0.312, the shipped operating point"."""
    rule = f"{finding_name(meta.class_names)} ≥ {threshold:.3f}"
    if state.is_shipped(meta, threshold):
        return f"{rule}, the shipped operating point"
    return f"{rule}, chosen for this session (shipped {meta.threshold:.3f})"


def fmt(value: Any, pattern: str = "{:.3f}") -> str:
    """Formats a metric, or "n/a" when it is missing."""
    if value is None:
        return "n/a"
    try:
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def markdown_table(rows: Sequence[tuple[str, str]], head: tuple[str, str]) -> str:
    """A two-column Markdown table."""
    body = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"| {head[0]} | {head[1]} |\n|:--|--:|\n{body}"
