"""Detectors: records and an explicit ``now`` in, observations and attacks out.

No I/O and no clock here: the engine passes time in, so every detector replays the
same way from a capture as it runs live.
"""
