"""The device agent: runtime + reporter (+ installer, later) in one process on the board."""

from edgemeta.agent.agent import IMAGE_SUFFIXES, DeviceAgent, InboxReport
from edgemeta.agent.stats import AccuracyCounter, LatencyWindow

__all__ = ["IMAGE_SUFFIXES", "AccuracyCounter", "DeviceAgent", "InboxReport", "LatencyWindow"]
