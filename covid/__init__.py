"""Chest X-ray screening: a Keras ResNet-50 (COVID-19, other pneumonia, normal) with Grad-CAM.

Research tool, not a medical device.
"""

__version__ = "0.1.0"

DISCLAIMER = "Research tool, not a medical device."
