"""gaitstream engines/backends."""
