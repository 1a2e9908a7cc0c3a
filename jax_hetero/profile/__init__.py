"""Per-step timing of the memory pipeline inside a decode step, with tables, JSON and plots."""
from .decode import DEFAULT_OPTIONS, PROFILE_CONFIG, StepProfile, device_name, profile_decode
from .report import document, from_json, stacked_bars, table, to_json

__all__ = ["profile_decode", "StepProfile", "PROFILE_CONFIG", "DEFAULT_OPTIONS", "device_name",
           "table", "to_json", "from_json", "document", "stacked_bars"]
