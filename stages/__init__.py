"""gaitstream stages."""
