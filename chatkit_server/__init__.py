"""chatkit-server: a self-hosted backend for OpenAI's ChatKit."""

__version__ = "0.1.0"
