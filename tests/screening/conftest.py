"""The screening tests' fixtures: a real Orthanc PACS (see ``tests/pacs_server.py``)."""

from tests.pacs_server import film_pixels, loaded_orthanc, orthanc

__all__ = ["film_pixels", "loaded_orthanc", "orthanc"]
