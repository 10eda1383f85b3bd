"""The model's spec: architecture and input contract, without importing torch (the serving
process reads it; only the training side needs the network itself)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.io import read_json

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.pt"
ONNX_FILE = "model.onnx"  # the shipped variant, as ONNX Runtime runs it
LINEAGE_FILE = "lineage.json"  # git commit, dataset hash, params hash, MLflow run id


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and input contract of a trained model (written as spec.json)."""

    arch: str
    classes: list[str]
    in_channels: int
    image_size: int
    channels: list[int]
    hidden: int
    dropout: float
    mean: float  # input normalisation, pixel values scaled to [0, 1]
    std: float
    # True after structured pruning: layer widths then come from the saved weights.
    channel_pruned: bool = False
    # components/tasks: "classification" (a class per image) or "segmentation" (a class per
    # pixel; `classes` are then indexed by class id, and masks hold ids or ignore_index).
    task: str = "classification"
    ignore_index: int = 255  # segmentation: mask pixels that carry no label
    output_stride: int = (
        16  # deeplabv3plus: input size / encoder feature size (8 or 16)
    )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def read(cls, model_dir: Path) -> ModelSpec:
        return cls(**read_json(model_dir / SPEC_FILE))
