"""The embedding network on OpenVINO: the ONNX export in fp32, or statically quantized to int8 with NNCF.

Static int8 fixes every activation's scale from a calibration set, so it needs representative inputs: the
corpus' own chunk texts, tokenized the way the model tokenizes them (``tasks.ingest.embedding`` picks 64 of a
run's first chunk texts by digest). Nothing is downloaded. The quantized model is saved in the model's cache folder
under a fingerprint of its calibration inputs, and ``calibration.json`` there names the latest one: later
processes (a re-run, a one-document event) load it instead of calibrating again.

Not through optimum-intel (sentence-transformers' ``backend="openvino"``): it pulls torchvision, which breaks
transformers' imports under CPU torch (docs/ingestion.md). The ONNX file is read by OpenVINO's own ONNX
frontend (``Core.read_model``: what ``openvino.convert_model`` runs, without its telemetry).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

POINTER = "calibration.json"
QUANTIZE_RECIPE = "transformer-no-bias-correction"  # part of a quantized model's name: another recipe, another file
log = logging.getLogger(__name__)


@lru_cache
def openvino_core() -> Any:
    """One OpenVINO Core per process (it holds the CPU plugin)."""
    import openvino as ov

    return ov.Core()


def calibrated(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The latest model quantized on a corpus' chunks for this model folder, with what it was calibrated on."""
    pointer = folder / POINTER
    if not pointer.exists():
        return None
    record: dict[str, Any] = json.loads(pointer.read_text())
    path = folder / str(record.get("model", ""))
    return (path, record) if path.suffix == ".xml" and path.exists() else None


def quantize_static(source: Path, samples: list[dict[str, np.ndarray]], folder: Path) -> Path:
    """``source`` (ONNX fp32) quantized to int8 by NNCF's post-training quantization, its activation ranges
    calibrated on ``samples`` (one tokenized text each: no padding in the statistics); cached by their
    fingerprint.

    NNCF's statistics run on OpenVINO's default threads (its engine compiles with its own ``Core`` and takes no
    thread setting): 11.6 s for 64 texts on this host (2026-12-07), once per model and calibration set. Without
    NNCF's bias correction: 9.7 s -> 6.7 s, and the same vectors (cosine to PyTorch fp32 over 256 other Ray docs
    paragraphs: mean 0.99652 against 0.99650, least 0.9835 against 0.9823; docs/ingestion.md)."""
    digest = hashlib.sha256(QUANTIZE_RECIPE.encode())
    for sample in samples:
        for name in sorted(sample):
            digest.update(name.encode() + sample[name].tobytes())
    target = folder / f"openvino-int8-{digest.hexdigest()[:16]}.xml"
    if target.exists():
        return target
    os.environ.setdefault("NNCF_CI", "1")  # NNCF's telemetry off: it is NNCF's own switch
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    start = time.perf_counter()
    core = openvino_core()
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout is ``ragtune ingest --json``'s
        quantized = nncf.quantize(core.read_model(str(source)), nncf.Dataset(samples), subset_size=len(samples),
                                  model_type=nncf.ModelType.TRANSFORMER,
                                  advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True))
    tmp = target.with_name(f"tmp-{os.getpid()}-{target.name}")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    tmp.with_suffix(".bin").rename(target.with_suffix(".bin"))
    tmp.rename(target)  # the .xml last: a model whose .xml exists is complete
    log.info("embedding model quantized to static int8 on %d texts in %.1f s", len(samples),
             time.perf_counter() - start)
    return target


def remember(folder: Path, model: Path, record: dict[str, Any]) -> None:
    """Name ``model`` as this model folder's calibrated int8 network (atomic: one writer wins)."""
    tmp = folder / f"{POINTER}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"model": model.name, **record}))
    tmp.rename(folder / POINTER)


@lru_cache
def openvino_network_class() -> type:
    """Defined on first use: importing this module must not import torch."""
    import torch

    class OpenVinoNetwork(torch.nn.Module):
        """Called as the transformers model is (keyword tensors in, ``last_hidden_state`` out); ``use`` swaps
        the OpenVINO model it runs (fp32 until a calibrated int8 one is ready)."""

        def __init__(self, path: Path, config: Any, names: list[str]) -> None:
            super().__init__()
            self.config, self.names = config, names
            self.threads = torch.get_num_threads()
            self.use(path)

        def use(self, model: Path | Any) -> None:
            """Run ``model`` from now on: a path to an ONNX or OpenVINO IR file (read when first run), or an
            ``openvino.Model``."""
            self.source = model
            self._compiled: dict[int, Any] = {}

        def forward(self, **features: Any) -> dict[str, Any]:
            feeds = {k: features[k].cpu().numpy() for k in self.names}
            hidden = self._request().infer(feeds)[0]
            return {"last_hidden_state": torch.from_numpy(np.array(hidden, dtype=np.float32))}

        def _request(self) -> Any:
            """OpenVINO fixes a compiled model's threads: one per count the free cores asked for."""
            if self.threads not in self._compiled:
                if isinstance(self.source, Path):
                    self.source = openvino_core().read_model(str(self.source))
                config = {"INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                          "ENABLE_CPU_PINNING": False}  # the cores are shared with the run's parsers
                compiled = openvino_core().compile_model(self.source, "CPU", config)
                self._compiled[self.threads] = compiled.create_infer_request()
            return self._compiled[self.threads]

    return OpenVinoNetwork
