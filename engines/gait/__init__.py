"""gaitstream engines/gait."""
