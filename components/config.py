"""Typed configuration: one section of params.yaml per stage.

Each section is a frozen pydantic model with `extra="forbid"` and strict types, so an unknown
key, a missing key or a value of the wrong type fails at load time with the key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, malformed, or a section does not match its typed config."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class IngestConfig(_Section):
    source: str = "builtin:digits"
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)
    seed: int = 0
    # Images above this pixel count are not decoded at ingest (no statistics); validate
    # then refuses them by their header alone, so a decompression bomb is never expanded.
    max_pixels: int = Field(50_000_000, gt=0)

    @model_validator(mode="after")
    def _fractions_leave_a_train_split(self) -> IngestConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1")
        return self


class ValidateConfig(_Section):
    # classification: the class folders
    min_classes: int = Field(2, ge=2)
    min_images_per_class: int = Field(10, ge=1)
    # largest class count divided by the smallest; 1.0 means perfectly balanced
    max_class_imbalance: float = Field(5.0, ge=1)
    min_side: int = Field(8, ge=1)
    max_side: int = Field(4096, ge=1)
    max_pixels: int = Field(16_000_000, ge=1)
    # segmentation: the share of images whose mask is all background (no object to learn)
    max_empty_share: float = Field(0.2, ge=0, le=1)


class TrainConfig(_Section):
    # classification: cnn | resnet; segmentation: unet | deeplabv3plus
    arch: Literal["cnn", "resnet", "unet", "deeplabv3plus"] = "cnn"
    # ce: cross-entropy (segmentation: the ignore id's pixels left out); ce_dice: + soft Dice
    loss: Literal["ce", "ce_dice"] = "ce"
    # Applied to the image and its mask together, seeded (components/augment.py).
    augment: list[Literal["hflip", "vflip", "scale_crop"]] = Field(default_factory=list)
    output_stride: Literal[8, 16] = 16  # deeplabv3plus
    epochs: int = Field(15, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    # Global batch: each of the num_workers gets batch_size // num_workers, so the
    # optimisation (and the result) does not change with the worker count.
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    amp: bool = (
        True  # on GPU: bf16 autocast where supported, else fp16 with loss scaling
    )
    channels_last: bool = True  # on GPU only
    seed: int = 0
    image_size: int = Field(16, ge=4)
    # cnn/resnet: a block (stage) per width; unet: the encoder's levels; deeplabv3plus: its
    # residual stages
    channels: list[int] = Field(default_factory=lambda: [32, 64])
    hidden: int = Field(128, ge=1)  # classifier head width; deeplabv3plus: ASPP width
    dropout: float = Field(0.2, ge=0, lt=1)
    loader_workers: int = Field(0, ge=0)
    max_failures: int = Field(
        2, ge=0
    )  # worker-group restarts from the latest checkpoint
    checkpoints_to_keep: int = Field(
        2, ge=1
    )  # best by val_accuracy (segmentation: val_miou); the latest is kept too
    experiment: str = "image-classifier"
    # "" keeps Ray Train's checkpoints under .cache/ray; "s3://bucket/prefix" at scale.
    storage_path: str = ""

    @model_validator(mode="after")
    def _channels_not_empty(self) -> TrainConfig:
        if not self.channels or min(self.channels) < 1:
            raise ValueError("channels must list at least one positive width")
        if self.batch_size < self.num_workers:
            raise ValueError("batch_size must be at least num_workers (it is global)")
        return self


class TuneConfig(_Section):
    """Search over train.* with Optuna proposing and ASHA stopping weak trials early.

    num_samples: 1 means no search: train.* is used as given.
    """

    num_samples: int = Field(1, ge=1)
    max_concurrent: int = Field(1, ge=1)
    grace_period: int = Field(
        2, ge=1
    )  # epochs every trial gets before ASHA may stop it
    reduction_factor: int = Field(3, ge=2)
    seed: int = 0
    # [low, high] ranges (YAML lists; strict typing reads a list, not a tuple)
    lr: list[float] = Field([1e-4, 1e-2], min_length=2, max_length=2)  # log-uniform
    weight_decay: list[float] = Field([1e-6, 1e-2], min_length=2, max_length=2)  # log
    dropout: list[float] = Field([0.0, 0.5], min_length=2, max_length=2)  # uniform
    width: list[int] = Field([16, 32, 64], min_length=1)  # first block's channels
    batch_size: list[int] = Field([32, 64, 128], min_length=1)

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> TuneConfig:
        for name in ("lr", "weight_decay", "dropout"):
            low, high = getattr(self, name)
            if not 0 <= low < high:
                raise ValueError(f"{name} must be [low, high] with 0 <= low < high")
        if self.lr[0] <= 0 or self.weight_decay[0] <= 0:
            raise ValueError(
                "lr and weight_decay are log-uniform: their low must be > 0"
            )
        return self


# The variants compress can build, each exported to ONNX and measured:
#   fp32                      the candidate as trained
#   pruned_unstructured       global magnitude pruning + fine-tune
#   pruned_channels           structured channel pruning + fine-tune
#   int8_ptq                  post-training int8, no fine-tune: the baseline QAT must beat
#   int8_qat                  quantization-aware fine-tune to int8
#   pruned_unstructured_int8  QAT on the unstructured-pruned model, its zeros kept
#   pruned_channels_int8      QAT on the channel-pruned model
Variant = Literal[
    "fp32",
    "pruned_unstructured",
    "pruned_channels",
    "int8_ptq",
    "int8_qat",
    "pruned_unstructured_int8",
    "pruned_channels_int8",
]
VARIANTS: tuple[Variant, ...] = get_args(Variant)


class CompressBudget(_Section):
    """What the shipped variant must meet; the smallest one that does ships."""

    max_accuracy_drop_pts: float = Field(
        1.0, ge=0
    )  # the headline test metric (accuracy; segmentation: mIoU) below fp32's, points
    max_latency_ms: float = Field(10.0, gt=0)  # batch 1, ONNX Runtime, compress.threads
    max_size_bytes: int = Field(10_000_000, gt=0)  # the ONNX file, gzip-compressed


class CompressConfig(_Section):
    variants: list[Variant] = Field(
        default_factory=lambda: list(VARIANTS), min_length=1
    )
    sparsity: float = Field(0.8, gt=0, lt=1)  # share of weights zeroed (unstructured)
    channel_ratio: float = Field(0.5, gt=0, lt=1)  # share of channels removed per layer
    finetune_epochs: int = Field(3, ge=0)  # after pruning
    qat_epochs: int = Field(3, ge=1)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    calibration_images: int = Field(256, ge=1)  # from the train split
    threads: int = Field(1, ge=1)  # ONNX Runtime intra-op threads for every timing
    warmup: int = Field(20, ge=0)
    runs: int = Field(100, ge=1)
    budget: CompressBudget = Field(
        default_factory=lambda: CompressBudget.model_validate({})
    )

    @model_validator(mode="after")
    def _fp32_is_measured(self) -> CompressConfig:
        if "fp32" not in self.variants:
            raise ValueError("variants must include fp32 (the reference for drops)")
        return self


SliceFeature = Literal["brightness", "contrast"]


class EvaluateConfig(_Section):
    batch_size: int = Field(256, ge=1)
    calibration_bins: int = Field(15, ge=2)  # equal-width confidence bins for ECE
    # Each feature (from the manifest) splits the test items at these two quantiles into
    # low / mid / high slices; promote.slice_floor applies to every slice.
    slice_features: list[SliceFeature] = Field(
        default_factory=lambda: list(get_args(SliceFeature))
    )
    slice_quantiles: list[float] = Field([0.25, 0.75], min_length=2, max_length=2)
    shift_pixels: int = Field(
        1, ge=1
    )  # behavioural check: a shift that should not matter
    brightness_delta: float = Field(0.03, gt=0)  # on [0, 1] pixels, the same
    threads: int = Field(1, ge=1)  # ONNX Runtime threads
    latency_runs: int = Field(200, ge=1)
    worst_images: int = Field(6, ge=1)  # segmentation: drawn in worst_images.png
    boundary_tolerance: int = Field(2, ge=0)  # segmentation: boundary F1's, pixels
    # The drift reference (reports/reference/): the embedding is projected on this many
    # principal axes of the reference's own embeddings.
    reference_dims: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _quantiles_ordered(self) -> EvaluateConfig:
        low, high = self.slice_quantiles
        if not 0 < low < high < 1:
            raise ValueError(
                "slice_quantiles must be [low, high] with 0 < low < high < 1"
            )
        return self


class PromoteConfig(_Section):
    """The promotion gate's rules (components/promotion.py) and where it records them."""

    model_name: str = Field("image-classifier", min_length=1)  # MLflow registered model
    min_accuracy: float = Field(0.9, ge=0, le=1)  # floor on the shipped test accuracy
    min_slice_accuracy: float = Field(0.8, ge=0, le=1)  # floor on every slice ...
    min_slice_items: int = Field(10, ge=1)  # ... with at least this many items
    # Segmentation (metric miou) floors; the accuracy ones above are classification's.
    min_miou: float = Field(0.8, ge=0, le=1)  # floor on the shipped test mIoU
    min_class_iou: float = Field(0.5, ge=0, le=1)  # floor on every class's test IoU
    min_slice_miou: float = Field(0.7, ge=0, le=1)  # floor on every slice's mIoU ...
    # ... with at least min_slice_items. Paired tests on the shared test items, one-sided:
    # exact McNemar (accuracy), Wilcoxon signed-rank on per-image IoU (miou).
    alpha: float = Field(0.05, gt=0, lt=1)
    require_improvement: bool = False  # True: significantly better, not just no worse
    min_paired_items: int = Field(
        30, ge=1
    )  # fewer shared items: cannot compare, reject
    # append-only: a local JSONL file, or s3://bucket/prefix (one object per entry)
    ledger: str = "ledger/promotions.jsonl"
    lock_timeout_s: float = Field(60.0, gt=0)  # wait for a concurrent promotion
    lock_stale_s: float = Field(
        600.0, gt=0
    )  # a lock older than this is a crashed run's


class CardConfig(_Section):
    """What the model card says that no file can: who owns the model and what it is for.
    The rest of the card is filled from lineage and the reports."""

    title: str = Field("Image classifier", min_length=1)
    owners: list[str] = Field(default_factory=list)
    license: str = "proprietary"
    intended_use: str = Field("", description="the primary intended use")
    intended_users: list[str] = Field(default_factory=list)
    out_of_scope: list[str] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=list)
    ethical_considerations: list[str] = Field(default_factory=list)
    # Stated power, turned into energy with the CPU and GPU seconds train measured: a
    # core busy at 100% and a GPU held by a worker, in watts; grid carbon intensity.
    cpu_watts_per_core: float = Field(12.0, gt=0)
    gpu_watts: float = Field(300.0, gt=0)
    grid_gco2_per_kwh: float = Field(400.0, ge=0)


class MonitorConfig(_Section):
    """The drift monitor (components/monitor.py): which batch, and how it is judged."""

    # split:<name> (a split of the ingested dataset, unlabelled), a folder of images, or
    # s3://bucket/prefix (every image under it; at scale, the inference log's prefix).
    current: str = Field("split:val", min_length=1)
    # When `current` is the serving prediction log (serve.log): judge the images it logged
    # in the last window_hours.
    window_hours: float = Field(24.0, gt=0)
    # Family-wise false-alarm rate per batch: each feature's test runs at alpha / features
    # (Bonferroni), so testing many features does not raise the rate of false alarms.
    alpha: float = Field(0.05, gt=0, lt=1)
    min_images: int = Field(100, ge=10)  # a smaller batch is an error, not "no drift"
    batch_size: int = Field(512, ge=1)
    model_name: str = Field("image-classifier", min_length=1)  # labels metrics, alerts
    # Evidently workspace (a folder, or http://host:port for a remote `evidently ui`).
    workspace: str = "monitoring/workspace"
    project: str = Field("image-classifier drift", min_length=1)
    # Names of environment variables, never the secrets themselves.
    webhook_env: str = "DRIFT_WEBHOOK_URL"  # Slack-style incoming webhook
    pushgateway_env: str = "PROMETHEUS_PUSHGATEWAY"  # host:port of a Pushgateway


class ServeConfig(_Section):
    """The online service (components/serve): the champion of promote.model_name, served with
    ONNX Runtime; image limits are validate's, so serving accepts what training accepted."""

    workers: int = Field(0, ge=0)  # uvicorn worker processes; 0 = one per CPU
    ort_threads: int = Field(0, ge=0)  # per session; 0 = CPUs // workers (at least 1)
    reload_seconds: float = Field(10.0, gt=0)  # how often the registry aliases are read
    # Share of requests (split on the request's image hash, so a retry lands on the same
    # model) answered by the version at alias `challenger`; 0 = the champion answers all.
    canary_fraction: float = Field(0.0, ge=0, le=1)
    max_images: int = Field(64, ge=1)  # per request
    max_body_bytes: int = Field(32_000_000, ge=1)  # per request
    # The prediction log the drift monitor reads: a folder, or s3://bucket/prefix.
    log: str = Field("serving/log", min_length=1)
    log_sample_rate: float = Field(1.0, ge=0, le=1)  # share of answered images logged
    log_flush_records: int = Field(256, ge=1)  # flush when this many are waiting ...
    log_flush_seconds: float = Field(5.0, gt=0)  # ... or the oldest is this old
    log_retries: int = Field(3, ge=0)  # per flush, with backoff; then kept for the next
    # Kept in memory while the log cannot be written; beyond, records are dropped (counted).
    log_max_pending: int = Field(50_000, ge=1)
    log_max_pending_mb: int = Field(256, ge=1)  # of images waiting, likewise
    p99_objective_ms: float = Field(50.0, gt=0)  # the latency alert's threshold (k8s/)


SectionT = TypeVar("SectionT", bound=_Section)


def load_task_name(params_path: Path = DEFAULT_PARAMS) -> str:
    """The top-level `task:` (default classification); ingest records it in dataset.json."""
    from components.tasks import TASKS

    task = read_params(params_path).get("task", TASKS[0])
    if task not in TASKS:
        raise ParamsError(
            f"{params_path}: task: {task!r} is not one of {', '.join(TASKS)}"
        )
    return str(task)


def read_params(params_path: Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """Read params.yaml as a mapping of section name to section mapping."""
    if not params_path.is_file():
        raise ParamsError(f"{params_path}: file not found")
    try:
        raw = yaml.safe_load(params_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{params_path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ParamsError(f"{params_path}: top level must be a mapping of sections")
    return raw


def load_params(
    section: str, config_type: type[SectionT], params_path: Path = DEFAULT_PARAMS
) -> SectionT:
    """Load one section of params.yaml into its typed config; raises ParamsError naming the key."""
    values = read_params(params_path).get(section)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ParamsError(f"{params_path}: section '{section}' must be a mapping")
    try:
        return config_type(**values)
    except ValidationError as error:
        problems = "; ".join(
            f"{section}.{'.'.join(str(part) for part in item['loc']) or '<section>'}: "
            f"{_describe(item)}"
            for item in error.errors()
        )
        raise ParamsError(f"{params_path}: {problems}") from None


def _describe(item: Any) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown key"
    return f"{item['msg']} (got {item.get('input')!r})"
