"""The settings object lives below the pipeline (``tasks.settings``); the CLI re-exports it."""

from tasks.settings import *  # noqa: F403
from tasks.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
