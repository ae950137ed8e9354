"""Image captioning studio: the library behind the app and the CLI (no UI code here)."""

__version__ = "0.1.0"
