"""What the pipeline's stages need to know about the task, behind one small interface.

The stages (ingest, validate, train, compress, evaluate, card, promote, monitor, serve) are
written once; what differs between telling a class per image (classification) and a class per
pixel (segmentation) lives in one module per task:

- the data: the source's layout, the manifest's label columns, the validation suites;
- training: a sample's target, the model, the loss, the running metrics and the one metric
  Tune and the best checkpoint follow;
- evaluation: the test metrics, the per-item quality the promotion gate pairs, the pictures;
- what the drift monitor and the service read from the model's outputs.

A classifier is the degenerate case of the dense task (one "pixel" per image), so most shared
code handles both through `Task.flatten`: predictions and targets as (items, ) labels and
(items, classes) probabilities.

The task is chosen once, by the top-level `task:` key of params.yaml, at ingest: it is written
into dataset.json, train copies it into the model's spec, and every later stage reads it from
there, so a stage never needs to be told which task it runs.

This module and the task modules import torch only inside the functions that train or score:
the serving process reads the task's outputs without torch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd

from components.io import read_json
from components.onnx_model import EmbeddingLayer

if TYPE_CHECKING:
    import torch

    from components.config import EvaluateConfig, ValidateConfig
    from components.data import LabelledImages
    from components.spec import ModelSpec

TaskName = Literal["classification", "segmentation"]
TASKS: tuple[TaskName, ...] = get_args(TaskName)
DATASET_JSON = "dataset.json"

# A GX suite: (frame, expectations, the column that names each offending row)
Suite = tuple[pd.DataFrame, list[Any], str]


@dataclass(frozen=True)
class Outputs:
    """A model's outputs on a batch, as the evaluation and the monitor read them."""

    probabilities: np.ndarray  # (N, K) or (N, K, H, W) softmax
    predicted: np.ndarray  # (N,) or (N, H, W) class ids

    @classmethod
    def from_logits(cls, logits: np.ndarray) -> Outputs:
        shifted = logits - logits.max(axis=1, keepdims=True)
        exponent = np.exp(shifted.astype(np.float64))
        probabilities = (exponent / exponent.sum(axis=1, keepdims=True)).astype(
            np.float32
        )
        return cls(probabilities, probabilities.argmax(axis=1))


@dataclass(frozen=True)
class Report:
    """What a task's evaluation returns to the evaluate stage."""

    metrics: dict[str, Any]  # merged into metrics.json (the task's headline names)
    per_item: (
        pd.DataFrame
    )  # one row per test item; a float `quality` column (the gate's)
    per_class: dict[str, Any]  # per_class.json
    # name -> writer(path): the task's pictures and tables, written into the report folder
    files: dict[str, Callable[[Path], None]]


@dataclass(frozen=True)
class Answer:
    """The service's answer for one image: `body` is what the client gets; the label,
    confidence and scores feed the service's metrics and the prediction log."""

    label: str  # the predicted class (segmentation: the largest object predicted)
    confidence: float
    scores: dict[str, float]  # class probabilities, or each class's share of the mask
    body: dict[str, Any]


class Task(ABC):
    """The per-task half of every stage. Implementations hold no state."""

    name: ClassVar[TaskName]
    metric: ClassVar[Literal["accuracy", "miou"]]  # the headline test metric
    architectures: ClassVar[tuple[str, ...]]
    builtin_source: ClassVar[str]  # ingest.source's built-in dataset for this task
    # The task's own pictures in evaluate's report folder (the model card shows them)
    report_pictures: ClassVar[tuple[str, ...]] = ()
    # Where the drift monitor reads the model's embedding in its ONNX graph
    embedding_layer: ClassVar[EmbeddingLayer]

    @property
    def target_metric(self) -> str:
        """The validation metric Tune maximises and the best checkpoint is chosen by."""
        return f"val_{self.metric}"

    @property
    def headline(self) -> str:
        """The test metric in metrics.json that the gate's floor and compress's budget use."""
        return f"test_{self.metric}"

    # ---- ingest ----------------------------------------------------------------------
    @abstractmethod
    def copy_source(self, source: str, root: Path) -> None:
        """Copy `source` (built-in, folder or s3://) into the dataset folder `root`."""

    @abstractmethod
    def describe(self, root: Path, max_pixels: int) -> pd.DataFrame:
        """The manifest (without `split`): one row per image, its `label` the stratum the
        split is stratified on, plus the task's label columns."""

    @abstractmethod
    def summary(self, root: Path, manifest: pd.DataFrame) -> dict[str, Any]:
        """dataset.json's task fields: `classes` (model class order) and what else the
        later stages need; `content` lines hashed into the dataset's content hash."""

    # ---- validate --------------------------------------------------------------------
    @abstractmethod
    def label_suites(
        self, manifest: pd.DataFrame, data_dir: Path, cfg: ValidateConfig
    ) -> dict[str, Suite]:
        """The GX suites over the labels (the file-level suite is shared)."""

    # ---- train, compress, evaluate -----------------------------------------------------
    @abstractmethod
    def dataset(
        self,
        data_dir: Path,
        rows: pd.DataFrame,
        spec: ModelSpec,
        augment: Sequence[str] = (),
        seed: int = 0,
    ) -> LabelledImages:
        """(normalised image, target) pairs of `rows`; `augment` for the train split."""

    def check_arch(self, arch: str) -> None:
        if arch not in self.architectures:
            raise ValueError(
                f"train.arch '{arch}' is not a {self.name} architecture "
                f"(choose one of {', '.join(self.architectures)})"
            )

    @abstractmethod
    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, spec: ModelSpec, kind: str
    ) -> torch.Tensor:
        """The mean training loss of the batch (`kind` is train.loss)."""

    @abstractmethod
    def counts(
        self, logits: torch.Tensor, targets: torch.Tensor, spec: ModelSpec
    ) -> torch.Tensor:
        """Additive float64 counts of the batch (summed over batches and workers)..."""

    @abstractmethod
    def zero_counts(self, spec: ModelSpec) -> torch.Tensor:
        """The counts of no batch (a worker whose shard is empty still joins the sum)."""

    @abstractmethod
    def running_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        """... turned into the epoch's metrics ({metric: ...} at least)."""

    @abstractmethod
    def targets(
        self, rows: pd.DataFrame, data_dir: Path, spec: ModelSpec
    ) -> np.ndarray:
        """The test targets at model resolution: (N,) class ids or (N, H, W) masks."""

    @abstractmethod
    def flatten(
        self, outputs: Outputs, targets: np.ndarray, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities (P, K), predicted (P,), labels (P,)) over the labelled units:
        images, or pixels without the ignore id."""

    @abstractmethod
    def score(
        self, predicted: np.ndarray, targets: np.ndarray, spec: ModelSpec
    ) -> float:
        """The headline metric (test accuracy, or mIoU) of these predictions."""

    @abstractmethod
    def item_quality(
        self, predicted: np.ndarray, targets: np.ndarray, spec: ModelSpec
    ) -> np.ndarray:
        """Per item, in [0, 1]: right or wrong, or the image's IoU. The promotion gate
        pairs these between models, and slices average them."""

    @abstractmethod
    def report(
        self,
        shipped: Outputs,
        fp32: Outputs,
        targets: np.ndarray,
        images: np.ndarray,
        rows: pd.DataFrame,
        spec: ModelSpec,
        cfg: EvaluateConfig,
        variant: str,
    ) -> Report:
        """The task's test metrics, per-item rows, per-class figures and pictures."""

    @abstractmethod
    def shifted(self, predicted: np.ndarray, shift: int) -> np.ndarray:
        """What the predictions should become when the input moves by `shift` pixels down
        and right (a class per image does not move; a mask moves with the image)."""

    # ---- monitor and serve -------------------------------------------------------------
    @abstractmethod
    def embedding_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The PyTorch twin of `embedding_layer`: the module whose input is the embedding."""

    @abstractmethod
    def output_features(
        self, probabilities: np.ndarray, spec: ModelSpec
    ) -> dict[str, np.ndarray]:
        """Per image, the outputs the drift monitor watches (softmax per class and the
        confidence; or each class's area share and the mean pixel entropy), and under
        "predicted_class" each image's predicted class id (a categorical feature)."""

    @abstractmethod
    def answer(
        self,
        probabilities: np.ndarray,
        spec: ModelSpec,
        sizes: Sequence[tuple[int, int]],
    ) -> list[Answer]:
        """The service's answer per image (`sizes`: each upload's width and height)."""


def get_task(name: str) -> Task:
    """The task implementation by name (spec.task, dataset.json's task, params' task)."""
    if name == "classification":
        from components.tasks.classification import Classification

        return Classification()
    if name == "segmentation":
        from components.tasks.segmentation import Segmentation

        return Segmentation()
    raise ValueError(f"task: unknown task '{name}' (choose one of {', '.join(TASKS)})")


def dataset_task(data_dir: Path) -> Task:
    """The task the dataset in `data_dir` was ingested for (older datasets: classification)."""
    return get_task(str(read_json(data_dir / DATASET_JSON).get("task", TASKS[0])))
