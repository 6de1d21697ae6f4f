"""gaitstream pipeline."""
