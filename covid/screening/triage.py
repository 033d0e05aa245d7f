"""The triage message, following the original prototype's rule.

A pathological finding means "admit for further diagnosis"; a normal result
means "go home and wait for the PCR result". Every message carries the
research-tool disclaimer.
"""

from __future__ import annotations

from covid import DISCLAIMER

ADMIT = "Pathological findings: admit for further diagnosis."
GO_HOME = "No finding: go home and wait for the PCR result."
NOT_A_CHEST_XRAY = (
    "This does not look like a chest X-ray, so no triage advice is given."
)


def triage_message(label: str, positive_class: str = "COVID", ood: bool = False) -> str:
    """Returns the triage advice for a label, with the disclaimer.

    Args:
        label: The predicted class name at the operating point.
        positive_class: The pathological class.
        ood: Whether the image was flagged as not a chest X-ray.

    Returns:
        The advice followed by "Research tool, not a medical device."
    """
    advice = GO_HOME
    if ood:
        advice = NOT_A_CHEST_XRAY
    elif label == positive_class:
        advice = ADMIT
    return f"{advice} {DISCLAIMER}"
