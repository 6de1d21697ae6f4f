"""gaitstream engines/data."""
