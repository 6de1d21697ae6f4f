"""Computation: detectors, segmenters, pretreatment, gait networks, backends, data, training, evaluation.

Knows nothing of ZeroMQ or the process graph: must not import `pipeline` or `stages`.
"""
