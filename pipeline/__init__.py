"""The gaitstream runtime: processes, ZeroMQ transport, messages, supervision, config, metrics.

Knows nothing of gait: must not import `stages`, `engines`, or `torch`.
"""
