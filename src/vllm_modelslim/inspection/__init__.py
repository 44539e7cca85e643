"""``vllm-modelslim inspect``: read a checkpoint folder's headers and report what would (not) load."""

from vllm_modelslim.inspection.analyze import inspect_checkpoint
from vllm_modelslim.inspection.report import CheckpointReport, LayerRow, Problem

__all__ = ["CheckpointReport", "LayerRow", "Problem", "inspect_checkpoint"]
