"""Where each memory-processing step should run: a cost model (measured CPU/GPU, modelled
FPGA, transfers, energy) and a planner searching every assignment.  See docs/placement.md."""
from .devices import Device, available_devices, cpu_device, fpga_device, gpu_device, transfer_seconds
from .planner import PLANNABLE, Placement, StepChoice, plan_placement
from .workloads import RAG_DEFAULTS

__all__ = ["Device", "available_devices", "cpu_device", "gpu_device", "fpga_device", "transfer_seconds",
           "PLANNABLE", "Placement", "StepChoice", "plan_placement", "RAG_DEFAULTS"]
