"""The device agent: runtime + reporter (+ installer, later) in one process on the board."""

from edgemeta.agent.agent import DeviceAgent, InboxReport
from edgemeta.agent.stats import AccuracyCounter, LatencyWindow

__all__ = ["AccuracyCounter", "DeviceAgent", "InboxReport", "LatencyWindow"]
