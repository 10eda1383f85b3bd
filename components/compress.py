"""compress: prune and quantize the candidate, export every variant to ONNX, measure each on
the test split (accuracy, size, latency, ONNX-vs-PyTorch parity), ship the smallest that
meets params.compress.budget, and fail closed when none does.

Fine-tuning runs in this one process, not under Ray Train: the fine-tunes are a few epochs,
and QAT under DDP needs care it does not repay here (each rank's observers see only its
shard, and DDP's buffer broadcast overwrites them with rank 0's ranges).
"""

from __future__ import annotations

import copy
import gzip
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from components.config import CompressBudget, CompressConfig
from components.data import read_split
from components.io import atomic_dir, read_json, write_json
from components.model import (
    LINEAGE_FILE,
    ModelSpec,
    load_model,
    save_model,
)
from components.onnx_model import OnnxModel, export_onnx, median_latency_ms
from components.pruning import (
    keep_masked,
    prune_channels,
    prune_global_magnitude,
    sparsity,
)
from components.quantize import (
    freeze_qat,
    prepare_qat,
    qat_weights,
    quantize_onnx,
    quantize_ptq,
)
from components.spec import ONNX_FILE
from components.tasks import Task, get_task
from components.tracking import log_results, training_run
from components.train_loop import Precision, run_task_epoch, seed_everything

log = logging.getLogger(__name__)

QAT_STATE_FILE = "qat_state.pt"  # the QAT graph's weights and quantizer ranges
VARIANT_FILE = "variant.json"
METRICS_FILE = "metrics.json"
_CPU = Precision(torch.device("cpu"), None, False, None)


class CompressionBudgetError(RuntimeError):
    """No variant meets params.compress.budget (the message carries the table)."""


@dataclass
class Variant:
    """One compressed model: its float module, its ONNX file and its PyTorch reference."""

    name: str
    model: nn.Module  # float weights (for int8 variants: the QAT-trained float weights)
    spec: ModelSpec
    onnx_path: Path
    reference: nn.Module  # what the ONNX file is checked against (int8: the QAT graph)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    qat_state: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class Measurement:
    variant: str
    # The task's headline test metric (`metric` in the report: accuracy; segmentation: mIoU)
    accuracy: float  # ONNX Runtime, test split
    accuracy_drop_pts: float  # fp32's minus this one's, in points
    pytorch_accuracy: float
    # share of test images (segmentation: pixels) where ORT and PyTorch predict alike
    onnx_agreement: float
    max_logit_diff: float
    onnx_bytes: int
    gzip_bytes: int
    latency_ms_b1: float  # median, after warm-up, compress.threads threads
    latency_ms_b64: float
    parameters: int
    sparsity: float
    budget_failures: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompressResult:
    model_dir: Path
    shipped: str
    table: list[Measurement]


def compress(
    cfg: CompressConfig,
    *,
    model_dir: Path,
    data_dir: Path,
    out_dir: Path,
    report_path: Path,
) -> CompressResult:
    """Build, measure and choose; write the shipped variant to `out_dir` and the table to
    `report_path` (JSON, with a PNG beside it). Raises CompressionBudgetError when no
    variant meets the budget; nothing is written then."""
    candidate, spec = load_model(model_dir)
    task = get_task(spec.task)
    test = _images(data_dir, "test", spec, task)
    with tempfile.TemporaryDirectory(prefix="compress-") as scratch:
        builder = _Builder(cfg, candidate, spec, data_dir, Path(scratch))
        variants = [builder.build(name) for name in cfg.variants]
        table = _measure_all(variants, test, cfg, task)
        shipped, table = choose_variant(table, cfg.budget)  # raises if nothing fits
        chosen = next(v for v in variants if v.name == shipped.variant)
        with atomic_dir(out_dir) as staging:
            _write_variant(chosen, staging, model_dir, shipped)
        _write_report(report_path, table, shipped, cfg.budget, task.metric)
    run_id = training_run(model_dir)
    if run_id:
        metrics = {f"compress_{k}": v for k, v in summary(table, shipped).items()}
        log_results(run_id, metrics, [report_path, report_path.with_suffix(".png"),
                                      out_dir], artifact_path="compression")  # fmt: skip
    log.info("shipped %s: %s", shipped.variant, shipped)
    return CompressResult(model_dir=out_dir, shipped=shipped.variant, table=table)


def choose_variant(
    table: list[Measurement], budget: CompressBudget
) -> tuple[Measurement, list[Measurement]]:
    """The smallest (gzip bytes; then the more accurate) variant within the budget, and
    the table with each row's budget failures filled in."""
    judged = [replace(row, budget_failures=_failures(row, budget)) for row in table]
    fitting = [row for row in judged if not row.budget_failures]
    if not fitting:
        raise CompressionBudgetError(
            "no variant meets params.compress.budget "
            f"({_budget_text(budget)}):\n{format_table(judged)}"
        )
    return min(fitting, key=lambda row: (row.gzip_bytes, -row.accuracy)), judged


def _failures(row: Measurement, budget: CompressBudget) -> tuple[str, ...]:
    failures = []
    if row.accuracy_drop_pts > budget.max_accuracy_drop_pts:
        failures.append(
            f"accuracy drop {row.accuracy_drop_pts:.2f} pts > "
            f"{budget.max_accuracy_drop_pts}"
        )
    if row.latency_ms_b1 > budget.max_latency_ms:
        failures.append(
            f"latency {row.latency_ms_b1:.3f} ms > {budget.max_latency_ms} ms"
        )
    if row.gzip_bytes > budget.max_size_bytes:
        failures.append(f"size {row.gzip_bytes} B > {budget.max_size_bytes} B")
    return tuple(failures)


def format_table(table: list[Measurement]) -> str:
    header = (
        f"{'variant':<26}{'accuracy':>9}{'drop':>7}{'agree':>7}{'gzip B':>10}"
        f"{'b1 ms':>8}{'b64 ms':>8}  budget"
    )
    lines = [header]
    for row in table:
        verdict = "; ".join(row.budget_failures) or "ok"
        lines.append(
            f"{row.variant:<26}{row.accuracy:>9.4f}{row.accuracy_drop_pts:>7.2f}"
            f"{row.onnx_agreement:>7.3f}{row.gzip_bytes:>10}{row.latency_ms_b1:>8.3f}"
            f"{row.latency_ms_b64:>8.2f}  {verdict}"
        )
    return "\n".join(lines)


def summary(table: list[Measurement], shipped: Measurement) -> dict[str, float]:
    """The shipped variant against fp32: the figures `dvc metrics diff` shows."""
    fp32 = next(row for row in table if row.variant == "fp32")
    return {
        "size_ratio": round(fp32.gzip_bytes / shipped.gzip_bytes, 3),
        "size_ratio_raw": round(fp32.onnx_bytes / shipped.onnx_bytes, 3),
        "latency_speedup": round(fp32.latency_ms_b1 / shipped.latency_ms_b1, 3),
        "accuracy_drop_pts": shipped.accuracy_drop_pts,
        "onnx_agreement": shipped.onnx_agreement,
        "accuracy": shipped.accuracy,
    }


def _budget_text(budget: CompressBudget) -> str:
    return ", ".join(f"{key} {value}" for key, value in budget.model_dump().items())


class _Builder:
    """Builds each variant from the candidate; pruned models are built once and reused by
    their int8 variants."""

    def __init__(
        self,
        cfg: CompressConfig,
        candidate: nn.Module,
        spec: ModelSpec,
        data_dir: Path,
        scratch: Path,
    ) -> None:
        self.cfg, self.candidate, self.spec, self.scratch = (
            cfg,
            candidate,
            spec,
            scratch,
        )
        self.task = get_task(spec.task)
        self.train_set = self.task.dataset(
            data_dir, read_split(data_dir, "train"), spec
        )
        self.example = torch.stack([self.train_set[i][0] for i in range(2)])
        self._pruned: dict[str, Variant] = {}

    def build(self, name: str) -> Variant:
        log.info("building variant %s", name)
        seed_everything(self.cfg.seed)
        if name == "fp32":
            return self._float(name, copy.deepcopy(self.candidate), self.spec, {})
        if name == "int8_ptq":
            return self._ptq(name)
        if name == "int8_qat":
            return self._qat(name, self._float("fp32", copy.deepcopy(self.candidate),
                                               self.spec, {}))  # fmt: skip
        base = name.removesuffix("_int8")
        if base not in self._pruned:
            self._pruned[base] = self._prune(base)
        if name.endswith("_int8"):
            return self._qat(name, self._pruned[base])
        return self._pruned[base]

    def _prune(self, name: str) -> Variant:
        model = copy.deepcopy(self.candidate)
        spec = self.spec
        masks: dict[str, torch.Tensor] = {}
        if name == "pruned_unstructured":
            masks = prune_global_magnitude(model, self.cfg.sparsity)
        else:
            prune_channels(model.eval(), self.cfg.channel_ratio, self.example)
            spec = replace(spec, channel_pruned=True)
        self._fine_tune(model, self.cfg.finetune_epochs, masks)
        return self._float(name, model, spec, masks)

    def _float(
        self, name: str, model: nn.Module, spec: ModelSpec, masks: dict[str, Any]
    ) -> Variant:
        path = export_onnx(model.eval(), self.example, self.scratch / f"{name}.onnx")
        return Variant(name, model, spec, path, reference=model, masks=masks)

    def _ptq(self, name: str) -> Variant:
        model = copy.deepcopy(self.candidate).eval()
        fp32_path = export_onnx(model, self.example, self.scratch / f"{name}.fp32.onnx")
        path = self.scratch / f"{name}.onnx"
        quantize_onnx(fp32_path, path, "images", self._calibration())
        reference = quantize_ptq(model, self.example, self._calibration())
        return Variant(name, model, self.spec, path, reference=reference)

    def _qat(self, name: str, base: Variant) -> Variant:
        prepared = prepare_qat(copy.deepcopy(base.model), self.example)
        self._fine_tune(prepared, self.cfg.qat_epochs, base.masks)
        qat_state = {k: v.detach().clone() for k, v in prepared.state_dict().items()}
        model = copy.deepcopy(base.model)
        model.load_state_dict(qat_weights(prepared, model))
        fp32_path = export_onnx(model, self.example, self.scratch / f"{name}.fp32.onnx")
        path = self.scratch / f"{name}.onnx"
        quantize_onnx(fp32_path, path, "images", self._calibration())
        return Variant(name, model.eval(), base.spec, path,
                       reference=freeze_qat(prepared), masks=base.masks,
                       qat_state=qat_state)  # fmt: skip

    def _fine_tune(
        self, model: nn.Module, epochs: int, masks: dict[str, torch.Tensor]
    ) -> None:
        if epochs == 0:
            return
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.cfg.lr)
        if masks:
            optimizer.register_step_post_hook(keep_masked(model, masks))
        generator = torch.Generator().manual_seed(self.cfg.seed)
        loader = DataLoader(self.train_set, batch_size=self.cfg.batch_size,
                            shuffle=True, generator=generator)  # fmt: skip
        for epoch in range(epochs):
            result = run_task_epoch(
                model, loader, _CPU, self.task, self.spec, optimizer
            )
            log.info("  fine-tune epoch %d: %s", epoch,
                     ", ".join(f"{k} {v:.4f}" for k, v in result.items()))  # fmt: skip

    def _calibration(self) -> Iterator[np.ndarray]:
        """The same seeded sample of training images for every int8 variant."""
        count = min(self.cfg.calibration_images, len(self.train_set))
        order = np.random.default_rng(self.cfg.seed).permutation(len(self.train_set))
        for start in range(0, count, self.cfg.batch_size):
            indices = order[start : min(count, start + self.cfg.batch_size)]
            yield torch.stack([self.train_set[int(i)][0] for i in indices]).numpy()


@dataclass(frozen=True)
class _TestSet:
    images: np.ndarray
    labels: np.ndarray  # (N,) class ids, or (N, H, W) masks
    spec: ModelSpec


def _images(data_dir: Path, split: str, spec: ModelSpec, task: Task) -> _TestSet:
    rows = read_split(data_dir, split)
    dataset = task.dataset(data_dir, rows, spec)
    images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
    return _TestSet(images.astype(np.float32), task.targets(rows, data_dir, spec), spec)


def _measure_all(
    variants: list[Variant], test: _TestSet, cfg: CompressConfig, task: Task
) -> list[Measurement]:
    sessions = {v.name: OnnxModel(v.onnx_path, threads=cfg.threads) for v in variants}
    batch64 = np.resize(test.images, (64, *test.images.shape[1:]))
    latency_b1 = median_latency_ms(sessions, test.images[:1], cfg.warmup, cfg.runs)
    latency_b64 = median_latency_ms(
        sessions, batch64, min(cfg.warmup, 5), max(5, cfg.runs // 10)
    )
    rows = [
        _measure(
            v, sessions[v.name], test, latency_b1[v.name], latency_b64[v.name], task
        )
        for v in variants
    ]
    fp32 = next(row for row in rows if row.variant == "fp32")
    return [
        replace(row, accuracy_drop_pts=round(100 * (fp32.accuracy - row.accuracy), 4))
        for row in rows
    ]


def _measure(
    variant: Variant,
    session: OnnxModel,
    test: _TestSet,
    latency_b1: float,
    latency_b64: float,
    task: Task,
) -> Measurement:
    onnx_logits = _batched(session.logits, test.images)
    with torch.no_grad():
        torch_logits = _batched(
            lambda batch: variant.reference(torch.from_numpy(batch)).numpy(),
            test.images,
        )
    data = variant.onnx_path.read_bytes()
    onnx_predicted = onnx_logits.argmax(1)
    return Measurement(
        variant=variant.name,
        accuracy=task.score(onnx_predicted, test.labels, test.spec),
        accuracy_drop_pts=0.0,  # filled in against fp32 by _measure_all
        pytorch_accuracy=task.score(torch_logits.argmax(1), test.labels, test.spec),
        onnx_agreement=float((onnx_predicted == torch_logits.argmax(1)).mean()),
        max_logit_diff=float(np.abs(onnx_logits - torch_logits).max()),
        onnx_bytes=len(data),
        gzip_bytes=len(gzip.compress(data, compresslevel=9, mtime=0)),
        latency_ms_b1=latency_b1,
        latency_ms_b64=latency_b64,
        parameters=sum(int(p.numel()) for p in variant.model.parameters()),
        sparsity=round(sparsity(variant.model), 4),
    )


def _batched(predict: Any, images: np.ndarray, size: int = 256) -> np.ndarray:
    return np.concatenate(
        [predict(images[start : start + size]) for start in range(0, len(images), size)]
    )


def _write_variant(
    variant: Variant, folder: Path, candidate_dir: Path, row: Measurement
) -> None:
    """The ONNX file that ships, its float weights and spec (weights only), the QAT state
    that rebuilds the PyTorch int8 model, and the candidate's lineage."""
    (folder / ONNX_FILE).write_bytes(variant.onnx_path.read_bytes())
    save_model(variant.model, variant.spec, folder)
    if variant.qat_state is not None:
        torch.save(variant.qat_state, folder / QAT_STATE_FILE)
    write_json(folder / VARIANT_FILE, {"variant": variant.name})
    write_json(folder / METRICS_FILE, _flat_metrics(row))
    lineage = candidate_dir / LINEAGE_FILE
    if lineage.is_file():
        write_json(folder / LINEAGE_FILE, read_json(lineage))


def _flat_metrics(row: Measurement) -> dict[str, Any]:
    metrics = asdict(row)
    metrics.pop("budget_failures")
    return metrics


def _write_report(
    path: Path,
    table: list[Measurement],
    shipped: Measurement,
    budget: CompressBudget,
    metric: str,
) -> None:
    write_json(path, {
        "shipped": shipped.variant,
        "metric": metric,  # what the table's `accuracy` columns measure
        "summary": summary(table, shipped),
        "budget": budget.model_dump(),
        "variants": [asdict(row) for row in table],
    })  # fmt: skip
    _plot(path.with_suffix(".png"), table, shipped.variant, metric)


def _plot(path: Path, table: list[Measurement], shipped: str, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_latency, by_size) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for row in table:
        marker = "*" if row.variant == shipped else "o"
        for axes, x in (
            (by_latency, row.latency_ms_b1),
            (by_size, row.gzip_bytes / 1e3),
        ):
            axes.scatter(
                x, 100 * row.accuracy, marker=marker, s=160 if marker == "*" else 50
            )
            axes.annotate(row.variant, (x, 100 * row.accuracy), fontsize=7,
                          xytext=(4, 4), textcoords="offset points")  # fmt: skip
    by_latency.set_xlabel("batch-1 latency, ms (ONNX Runtime)")
    by_size.set_xlabel("size, kB (ONNX, gzip)")
    by_latency.set_ylabel(f"test {metric}, %")
    figure.suptitle(f"Compression variants (shipped: {shipped}, marked *)")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    temporary.replace(path)
