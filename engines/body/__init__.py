"""Bodies with known 3D for the synthetic gait data: an open SMPL-format model, walking motion, silhouette rendering.

Must not import `pipeline` or `stages`.
"""
