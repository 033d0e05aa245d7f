"""The classes' names, their order and the columns named after them: one place for each.

A shipped model records its own class names in its metadata
(:attr:`covid.model.metadata.ModelMetadata.class_names`); code that reads a
model's outputs takes the names and their indices from there, through
:func:`index_of`. The names below are what the three-class recipe trains and what
rules keyed by meaning need (the normal class decides "home"; COVID has its own
AUC). Nothing else in the package writes a class name as a literal.
"""

from __future__ import annotations

from collections.abc import Sequence

COVID = "COVID"
"""COVID-19 pneumonia."""
OTHER_PNEUMONIA = "Other pneumonia"
"""Any non-COVID pneumonia (viral or bacterial)."""
NORMAL = "Normal"
"""No finding: the one class that the triage rule sends home."""

CLASS_NAMES: tuple[str, ...] = (COVID, OTHER_PNEUMONIA, NORMAL)
"""The three-class recipe's output order (a model's metadata is the authority)."""
FINDINGS: tuple[str, ...] = (COVID, OTHER_PNEUMONIA)
"""The pathological classes: every one of them means "admit"."""


def index_of(class_names: Sequence[str], name: str) -> int:
    """A class's output index in a model whose metadata lists ``class_names``.

    Raises:
        KeyError: The model has no such class (e.g. "Other pneumonia" in a
            two-class model), said with the classes it has.
    """
    try:
        return list(class_names).index(name)
    except ValueError:
        known = ", ".join(class_names)
        raise KeyError(f"the model has no class {name!r}; it has {known}") from None


def probability_column(name: str) -> str:
    """A class's probability column in every CSV.

    ``"Other pneumonia"`` -> ``"p_other_pneumonia"``.
    """
    return f"p_{name.lower().replace(' ', '_')}"


PROBABILITY_COLUMNS: dict[str, str] = {probability_column(n): n for n in CLASS_NAMES}
"""Each probability column written by the CLIs and the archive, with its class."""
