"""Train a small step-level draft for a target model from the target's own solutions.

Lookahead Reasoning pays off only when the draft is much cheaper per step than the target and
still writes the steps the target would write. When no small model of the target's family exists
(or the one that exists writes differently), distil one, as EAGLE/SpecForge users do:

1. **generate**: the target solves questions of a dataset (default: GSM8K *train*; never a test
   split) with the same prompt the reasoner uses, greedy, batched; each solution is cut after
   the first step that states the final answer. Rows are appended to ``<out>/data.jsonl`` as
   they finish, so an interrupted run resumes where it stopped.
2. **train**: a small causal LM (transformers' ``LlamaConfig``) with the target's tokenizer
   learns those solutions (prompt tokens masked out of the loss). Its token embeddings start as
   the PCA projection of the target's, so it begins with the target's token geometry. The loss
   is a softmax over the tokens the solutions use plus fresh random negatives each step (much
   cheaper than the full vocabulary on CPU; the negatives keep unused tokens' logits low).
   Checkpoints (model, optimizer, step) go to ``<out>/checkpoint.pt``; a rerun resumes.
3. **save**: a HF model directory (fp16 safetensors + tokenizer + ``README.md`` model card with
   data, steps, loss, size and the command) at ``<out>/model``, loadable as an engine model.

Example:
    lookahead distill --out runs/draft --limit 1000          # generate + train + save
    lookahead solve --example gsm8k:0 --set draft=runs/draft/model
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lookahead.config import LookaheadConfig
from lookahead.errors import ConfigError, DataError
from lookahead.prompts import build_messages

logger = logging.getLogger("lookahead.distill")

DATA_FILE = "data.jsonl"  # generated solutions, one JSON object per question
CHECKPOINT_FILE = "checkpoint.pt"  # training state for resuming
MODEL_DIR = "model"  # the finished draft


@dataclass
class DraftShape:
    """Size of the draft network (a Llama decoder with the target's tokenizer)."""

    hidden_size: int = 256  # width of the residual stream
    num_layers: int = 4  # decoder layers
    num_heads: int = 4  # attention heads (head dim = hidden_size / num_heads)
    num_kv_heads: int = 2  # key/value heads (grouped-query attention)
    intermediate_size: int = 1024  # MLP width
    max_positions: int = 2048  # longest sequence (prompt + completion) the draft handles (tokens)
    # Non-empty: the draft is the target cut down to these of its decoder layers (0-based, in
    # order), starting from the target's weights, with the target's token embeddings frozen; the
    # sizes above are then the target's own. Empty: a fresh network of the sizes above.
    target_layers: tuple[int, ...] = ()

    def describe(self, target_layers_total: int | None = None) -> str:
        """One line for the model card."""
        if self.target_layers:
            of = f" of {target_layers_total}" if target_layers_total else ""
            return (
                f"the target's own decoder layers {', '.join(map(str, self.target_layers))}{of}, "
                f"hidden {self.hidden_size}, {self.num_heads} heads ({self.num_kv_heads} KV), MLP {self.intermediate_size}, "
                "target embeddings (frozen)"
            )
        return (
            f"Llama decoder, {self.num_layers} layers, hidden {self.hidden_size}, {self.num_heads} heads "
            f"({self.num_kv_heads} KV), MLP {self.intermediate_size}"
        )


@dataclass
class TrainSettings:
    """Optimisation settings of `train_draft`."""

    epochs: float = 4.0  # passes over the generated solutions
    batch_tokens: int = 4096  # tokens per optimizer step (padded batch size x length)
    lr: float = 3e-3  # peak learning rate (AdamW), after a linear warm-up
    warmup_steps: int = 30  # optimizer steps of linear warm-up
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    weight_decay: float = 0.01  # AdamW weight decay (not applied to norms)
    negatives: int = 2048  # random vocabulary entries added to the softmax each step
    valid_fraction: float = 0.05  # share of solutions held out to measure the draft
    checkpoint_every: int = 50  # optimizer steps between checkpoints
    seed: int = 0  # data order, initialisation and negatives


@dataclass
class Solution:
    """One generated training example."""

    line: int  # 1-based line of the question in the source file
    question: str
    prompt: str  # the chat-formatted prompt the target saw
    completion: str  # the target's solution, cut after the final-answer step
    finish: str  # "answer", "eos" or "length"


# ---------------------------------------------------------------------------------------------
# Data


def default_questions_file() -> Path:
    """GSM8K *train*, the default questions of distill and calibrate (not shipped with the
    package): ``$LOOKAHEAD_DATA_DIR``, a ``shared/data`` folder beside the cwd or the repo, or the
    hub when ``datasets`` is installed and online; else a `DataError` naming the ways to get it
    (see `lookahead.eval.tasks.split_file`)."""
    from lookahead.eval.tasks import split_file

    return split_file("gsm8k", "train", own_file="--data FILE", dir_option=None)


def read_questions(path: str | Path, field_name: str = "question") -> list[tuple[int, str]]:
    """``(line number, question)`` for every row of a JSONL file; bad rows raise naming file and line."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a JSONL file; give --data the file inside it")
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist; give --data PATH (a JSONL file with a {field_name!r} field)")
    rows: list[tuple[int, str]] = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or field_name not in row:
                raise DataError(f"{path}:{number}: the row has no {field_name!r} field; pick it with --question-field")
            question = str(row[field_name]).strip()
            if not question:
                raise DataError(f"{path}:{number}: the {field_name!r} field is empty")
            rows.append((number, question))
    if not rows:
        raise DataError(f"dataset file {path} holds no rows")
    return rows


def read_solutions(path: Path) -> list[Solution]:
    """The solutions already generated; a torn last line (killed mid-write) is dropped."""
    if not path.is_file():
        return []
    out: list[Solution] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(Solution(**json.loads(raw)))
        except (json.JSONDecodeError, TypeError):
            continue
    return out


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a run killed mid-write), so appends start clean."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def _cut_after_answer(text: str, delimiter: str, pattern: re.Pattern[str]) -> tuple[str, bool]:
    """Keep the steps up to and including the first one that states the final answer."""
    pos = 0
    while pos < len(text):
        end = text.find(delimiter, pos)
        step_end = len(text) if end < 0 else end + len(delimiter)
        if pattern.search(text[pos:step_end]):
            return text[:step_end], True
        pos = step_end
    return text, False


def _chat_prompt(tokenizer: Any, config: LookaheadConfig, question: str) -> str:
    """The prompt `HFEngine.format_chat` gives the reasoner for ``question``."""
    messages = build_messages(question, config.prompt_template, config.system_prompt)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join([f"{m['role']}: {m['content']}" for m in messages] + ["assistant: "])


def _solutions_of(tokenizer: Any, batch: Sequence[tuple[int, str]], prompts: Sequence[str],
                  rows: Sequence[list[int]], delimiter: str, pattern: re.Pattern[str]) -> list[Solution]:
    """The generated rows as solutions, each cut after its final-answer step, with how it ended."""
    out = []
    for (line, question), prompt, row in zip(batch, prompts, rows, strict=True):
        ended = tokenizer.eos_token_id in row
        text = tokenizer.decode(row, skip_special_tokens=True)
        text, stated = _cut_after_answer(text, delimiter, pattern)
        finish = "answer" if stated else ("eos" if ended else "length")
        out.append(Solution(line, question, prompt, text, finish))
    return out


def generate_solutions(
    config: LookaheadConfig,
    questions: Sequence[tuple[int, str]],
    out_file: Path,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Let the target solve ``questions`` (greedy) and append them to ``out_file``; returns rows written.

    Questions whose line is already in ``out_file`` are skipped, so a rerun resumes. Questions are
    sorted by length so that batches pad little.
    """
    import torch

    from lookahead.engines.hf import load_pretrained, resolve_model

    done = {s.line for s in read_solutions(out_file)}
    todo = sorted(((line, q) for line, q in questions if line not in done), key=lambda item: len(item[1]))
    if not todo:
        return 0
    model, tokenizer = load_pretrained(resolve_model(config.target).source, torch.float32)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    pattern = re.compile(config.final_answer_pattern)
    delimiter = config.step_delimiter
    budget = max_new_tokens or config.max_total_tokens

    def answered(tokens: list[int]) -> bool:
        """Has a completed step stated the final answer?"""
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        cut, stated = _cut_after_answer(text, delimiter, pattern)
        return stated and (len(cut) < len(text) or text.endswith(delimiter))

    out_file.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(out_file)
    with out_file.open("a", encoding="utf-8") as handle:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            prompts = [_chat_prompt(tokenizer, config, q) for _, q in batch]
            rows = _greedy_batch(model, tokenizer, prompts, budget, answered)
            for solution in _solutions_of(tokenizer, batch, prompts, rows, delimiter, pattern):
                handle.write(json.dumps(asdict(solution), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            if progress is not None:
                progress(len(batch))
    return len(todo)


def _greedy_batch(model: Any, tokenizer: Any, prompts: list[str], budget: int, answered: Callable[[list[int]], bool]) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (left-padded batch) that drop rows as they finish.

    A row ends at EOS, at ``budget`` tokens, or once ``answered(tokens)`` (checked every 8 tokens).
    Unlike ``model.generate``, finished rows leave the batch, so one long row does not make the
    whole batch pay for its length.
    """
    import torch
    from transformers import DynamicCache

    eos = tokenizer.eos_token_id
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache()
    out: list[list[int]] = [[] for _ in prompts]
    live = list(range(len(prompts)))  # index into `out` of each batch row
    with torch.inference_mode():
        logits = model(
            input_ids=enc.input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        ).logits[:, -1]
        next_pos = positions[:, -1] + 1
        for _ in range(budget):
            tokens = logits.argmax(-1)
            keep = []
            for k, row in enumerate(live):
                token = int(tokens[k])
                out[row].append(token)
                n = len(out[row])
                finished = token == eos or n >= budget or (n % 8 == 0 and answered(out[row]))
                if not finished:
                    keep.append(k)
            if not keep:
                break
            if len(keep) < len(live):
                select = torch.tensor(keep, dtype=torch.long)
                cache.batch_select_indices(select)
                mask, tokens, next_pos = mask[select], tokens[select], next_pos[select]
                live = [live[k] for k in keep]
            mask = torch.cat([mask, torch.ones((len(live), 1), dtype=mask.dtype)], dim=1)
            logits = model(
                input_ids=tokens[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                past_key_values=cache, use_cache=True,
            ).logits[:, -1]
            next_pos = next_pos + 1
    return out


# ---------------------------------------------------------------------------------------------
# Training


def _loop_tokens(tokenizer: Any, solution: Solution, delimiter: str) -> tuple[list[int], int, list[tuple[int, int]]]:
    """``(token ids, prompt tokens, [(start, end) of each step])`` of one solution, tokenized the
    way the loop feeds text to a model.

    The loop re-tokenizes the prompt plus the committed steps at every call, as a text to continue
    (`lookahead.engines.hf.encode_continuations`): a context ending on ``"\\n\\n"`` is fed as the
    two newline tokens a model writes there (SmolLM2: 198 198), not as the one token a text ending
    on it gets (1116). So the context before every step is a prefix of the whole solution's
    continuation tokens, and a draft trained on those sees at every step start exactly what the
    loop shows it. A step whose context is not such a prefix (a tokenizer merging across the
    boundary) gets no span.
    """
    from lookahead.engines.hf import encode_continuations
    from lookahead.steps import split_steps

    steps = split_steps(solution.completion, delimiter)
    contexts = encode_continuations(tokenizer, [solution.prompt + "".join(steps[:k]) for k in range(len(steps) + 1)])
    ids = contexts[-1]
    bounds = [len(c) if c == ids[: len(c)] else None for c in contexts]
    spans = [(a, b) for a, b in itertools.pairwise(bounds) if a is not None and b is not None and b > a]
    return ids, len(contexts[0]), spans


def _encode(tokenizer: Any, solutions: Iterable[Solution], delimiter: str) -> list[tuple[list[int], int]]:
    """``(token ids, number of prompt tokens)`` per solution, as the loop feeds it (`_loop_tokens`);
    EOS closes solutions that ended."""
    out = []
    for s in solutions:
        ids, prompt_len, _ = _loop_tokens(tokenizer, s, delimiter)
        if s.finish == "eos" and tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]
        if len(ids) > prompt_len:
            out.append((ids, prompt_len))
    return out


def _batches(examples: list[tuple[list[int], int]], batch_tokens: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped by similar length, at most ``batch_tokens`` padded tokens per batch."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]) + rng.random())
    batches, current, longest = [], [], 0
    for i in order:
        n = len(examples[i][0])
        if current and max(longest, n) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def _collate(examples: list[tuple[list[int], int]], indices: list[int], pad_id: int):
    import torch

    length = max(len(examples[i][0]) for i in indices)
    ids = torch.full((len(indices), length), pad_id, dtype=torch.long)
    labels = torch.full((len(indices), length), -100, dtype=torch.long)
    mask = torch.zeros((len(indices), length), dtype=torch.long)
    for row, i in enumerate(indices):
        tokens, prompt_len = examples[i]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        labels[row, prompt_len : len(tokens)] = torch.tensor(tokens[prompt_len:])
    return ids, mask, labels


def _sampled_loss(model: Any, ids, mask, labels, keep, generator) -> tuple[Any, Any, Any]:
    """Cross-entropy over ``keep`` (the tokens the solutions use) plus random negatives.

    Returns (loss, number of predicted tokens, number predicted right within the softmax set).
    """
    import torch

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    chosen = targets != -100
    hidden = hidden[chosen]
    targets = targets[chosen]
    weight = model.get_output_embeddings().weight
    vocab = weight.shape[0]
    negatives = torch.randint(0, vocab, (keep.negatives,), generator=generator)
    candidates = torch.unique(torch.cat([keep.ids, negatives, targets]))
    position = torch.full((vocab,), -1, dtype=torch.long)
    position[candidates] = torch.arange(len(candidates))
    logits = hidden @ weight[candidates].T
    local_targets = position[targets]
    loss = torch.nn.functional.cross_entropy(logits, local_targets)
    correct = (logits.argmax(-1) == local_targets).sum()
    return loss, int(targets.numel()), int(correct)


@dataclass
class _Keep:
    ids: Any  # LongTensor of vocabulary ids the solutions use
    negatives: int


@dataclass
class TrainReport:
    """What training did, written into the model card and ``distill.json``."""

    examples: int = 0  # training solutions
    valid_examples: int = 0  # held-out solutions
    train_tokens: int = 0  # completion tokens in the training solutions
    steps: int = 0  # optimizer steps
    seconds: float = 0.0  # training wall time
    train_loss: float = float("nan")  # mean loss of the last 20 steps (softmax over kept tokens + negatives)
    valid_loss: float = float("nan")  # held-out loss, full-vocabulary softmax
    valid_accuracy: float = float("nan")  # held-out next-token top-1 agreement with the target (teacher forced)
    valid_step_match: float = float("nan")  # held-out target steps the draft writes token for token (share)
    valid_step_match_copy: float = float("nan")  # the same when the draft copies from its context (draft.copy)
    output_vocab: int = 0  # token ids the draft scores (output_vocab.json; 0 = the whole vocabulary)
    output_vocab_coverage: float = float("nan")  # share of held-out target tokens inside that list
    vocab_ids: list[int] = field(default_factory=list, repr=False)  # that list (for save_draft; not in the card)
    parameters: int = 0  # draft parameters
    trained_parameters: int = 0  # of which trained (the rest, e.g. frozen target embeddings, kept)
    shape: dict[str, Any] = field(default_factory=dict)  # the draft's actual DraftShape (asdict)
    history: list[dict[str, float]] = field(default_factory=list)  # (step, loss) samples


def _pca_embeddings(target_weight, hidden_size: int, seed: int):
    """Project the target's token embeddings onto their top ``hidden_size`` principal axes."""
    import torch

    torch.manual_seed(seed)
    weight = target_weight.float()
    centered = weight - weight.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centered, q=hidden_size, center=False, niter=4)
    projected = centered @ v[:, :hidden_size]
    return projected * (0.02 / projected.std())


def _cut_target(target: Any, shape: DraftShape) -> tuple[Any, DraftShape]:
    """The target cut down to ``shape.target_layers``, its embeddings frozen, and its actual shape."""
    import copy

    import torch

    total = len(target.model.layers)
    layers = list(shape.target_layers)
    if sorted(set(layers)) != layers or layers[0] < 0 or layers[-1] >= total:
        raise ConfigError(
            f"draft target_layers {layers}: give increasing layer numbers between 0 and {total - 1} "
            f"(the target has {total} decoder layers), e.g. 0,1,{total - 1}"
        )
    model = copy.deepcopy(target)
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in layers])
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    model.get_input_embeddings().weight.requires_grad_(False)
    if model.get_output_embeddings() is not None:
        model.get_output_embeddings().weight.requires_grad_(False)
    cfg = model.config
    actual = DraftShape(
        hidden_size=cfg.hidden_size,
        num_layers=len(layers),
        num_heads=cfg.num_attention_heads,
        num_kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        max_positions=shape.max_positions,
        target_layers=tuple(layers),
    )
    return model, actual


def _fresh_llama(target: Any, shape: DraftShape, seed: int) -> Any:
    """A new Llama of ``shape`` with the target's vocabulary and special tokens, PCA-initialised embeddings."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape.hidden_size % shape.num_heads or shape.num_heads % shape.num_kv_heads:
        raise ConfigError("draft shape: hidden_size must divide by num_heads, num_heads by num_kv_heads")
    target_config = target.config
    cfg = LlamaConfig(
        vocab_size=target_config.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_positions,
        rope_theta=getattr(target_config, "rope_theta", None) or 10000.0,
        rms_norm_eps=getattr(target_config, "rms_norm_eps", 1e-5),
        tie_word_embeddings=True,
        bos_token_id=target_config.bos_token_id,
        eos_token_id=target_config.eos_token_id,
        pad_token_id=getattr(target_config, "pad_token_id", None),
    )
    model = LlamaForCausalLM(cfg)
    embeddings = target.get_input_embeddings().weight.detach()
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(_pca_embeddings(embeddings, shape.hidden_size, seed))
    return model


def build_draft(target: Any, shape: DraftShape, seed: int) -> tuple[Any, DraftShape]:
    """The draft network to train and its actual shape.

    ``shape.target_layers`` empty: a fresh Llama with the target's vocabulary and special tokens
    and PCA-initialised embeddings. Otherwise the target itself cut down to those decoder layers
    (LayerSkip-style self-drafting): it starts out already writing like the target, which matters
    when only a thousand solutions are there to learn from; its embeddings stay frozen.
    """
    import torch

    torch.manual_seed(seed)
    if shape.target_layers:
        return _cut_target(target, shape)
    return _fresh_llama(target, shape, seed), shape


def _lr_at(step: int, total: int, settings: TrainSettings) -> float:
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = min(1.0, (step - settings.warmup_steps) / max(1, total - settings.warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return settings.lr * (settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine)


def _step_spans(tokenizer: Any, solutions: Iterable[Solution], delimiter: str) -> list[tuple[list[int], int, list[tuple[int, int]]]]:
    """``(token ids, prompt tokens, [(start, end) of each step])`` per solution, tokenized as the
    loop feeds it (`_loop_tokens`); for the step-level measure."""
    out = []
    for s in solutions:
        ids, prompt_len, spans = _loop_tokens(tokenizer, s, delimiter)
        if spans:
            out.append((ids, prompt_len, spans))
    return out


def _token_metrics(model: Any, examples: list[tuple[list[int], int]], pad_id: int, scored: Callable[[Any], Any]) -> tuple[float, float]:
    """Held-out (mean loss, top-1 agreement) per completion token, teacher forced."""
    import torch

    total_loss, total_tokens, correct = 0.0, 0, 0
    for start in range(0, len(examples), 8):
        indices = list(range(start, min(start + 8, len(examples))))
        ids, mask, labels = _collate(examples, indices, pad_id)
        logits = scored(model(input_ids=ids, attention_mask=mask).logits[:, :-1])
        targets = labels[:, 1:]
        chosen = targets != -100
        picked, wanted = logits[chosen], targets[chosen]
        losses = torch.nn.functional.cross_entropy(picked, wanted, reduction="none")
        loss = losses[torch.isfinite(losses)].sum()  # a token outside `allowed` counts as missed, not inf
        total_loss += float(loss)
        total_tokens += int(chosen.sum())
        correct += int((picked.argmax(-1) == wanted).sum())
    return total_loss / max(total_tokens, 1), correct / max(total_tokens, 1)


def _step_metrics(model: Any, stepped: Sequence[tuple[list[int], int, list]], scored: Callable[[Any], Any]) -> tuple[float, float]:
    """Held-out (step match, step match when copying): see `_evaluate`."""
    import torch

    from lookahead.config import CopyConfig
    from lookahead.engines.hf import restrict_to_copies

    copy = CopyConfig(enabled=True)
    matched, copied, steps = 0, 0, 0
    for tokens, _, spans in stepped:
        ids = torch.tensor([tokens])
        logits = scored(model(input_ids=ids).logits[0, :-1])  # logits[i] predicts token i + 1
        right = logits.argmax(-1) == ids[0, 1:]
        for begin, end in spans:
            steps += 1
            matched += int(bool(right[begin - 1 : end - 1].all()))
            copied += int(
                all(
                    int(restrict_to_copies(logits[i - 1], tokens[:i], copy).argmax()) == tokens[i]
                    for i in range(begin, end)
                )
            )
    step_match = matched / steps if steps else float("nan")
    copy_match = copied / steps if steps else float("nan")
    return step_match, copy_match


def _evaluate(
    model: Any, examples: list[tuple[list[int], int]], pad_id: int, stepped: Sequence[tuple[list[int], int, list]] = (),
    allowed: Any = None,
) -> tuple[float, float, float, float]:
    """Held-out (loss, top-1 agreement, step match, step match when copying) with the
    full-vocabulary softmax, or over the ``allowed`` ids only (the draft's output vocabulary, as
    the engine scores it) when given.

    Step match: the share of the target's steps (in ``stepped``) the draft would write token for
    token from the target's own prefix, i.e. its argmax agrees at every position of the step --
    what greedy drafting with the exact verifier accepts at depth 1. The last figure is the same
    with the draft copying from its context (``draft.copy=true``, `CopyConfig` defaults).
    """
    import torch

    if not examples:
        return float("nan"), float("nan"), float("nan"), float("nan")
    model.eval()
    outside = None
    if allowed is not None:
        outside = torch.ones(model.config.vocab_size, dtype=torch.bool)
        outside[allowed] = False

    def scored(logits: Any) -> Any:
        return logits if outside is None else logits.masked_fill(outside, float("-inf"))

    with torch.inference_mode():
        loss, accuracy = _token_metrics(model, examples, pad_id, scored)
        step_match, copy_match = _step_metrics(model, stepped, scored)
    model.train()
    return loss, accuracy, step_match, copy_match


def output_vocab_ids(tokenizer: Any, completions: Iterable[str], texts: Iterable[str] = ()) -> list[int]:
    """The token ids a draft should score (`lookahead.engines.hf.OUTPUT_VOCAB_FILE`): every token
    of the target's training ``completions``, of the ``texts`` it copies from (the questions) and
    the special tokens. On GSM8K train: ~12k of SmolLM2's 49k ids, 98.7% of test-question tokens."""
    ids = set(tokenizer.all_special_ids)
    for text in (*completions, *texts):
        ids.update(tokenizer(text, add_special_tokens=False).input_ids)
    return sorted(ids)


@dataclass
class _TrainingData:
    """The solutions tokenized as the loop feeds them (`_encode`), split into training and held-out."""

    train: list[tuple[list[int], int]]  # (token ids, prompt tokens) per training solution
    valid: list[tuple[list[int], int]]  # ... per held-out solution
    valid_solutions: list[Solution]  # the held-out solutions (for the step-level measure)
    keep: _Keep  # vocabulary ids every softmax scores (+ fresh negatives per step)
    vocab_ids: list[int]  # the draft's output vocabulary (`output_vocab_ids`)
    pad_id: int  # padding token id of the batches


def _training_data(tokenizer: Any, solutions: list[Solution], delimiter: str, settings: TrainSettings,
                   vocab_texts: Sequence[str]) -> _TrainingData:
    """Hold out ``settings.valid_fraction`` of the solutions (seeded shuffle), tokenize both parts."""
    import torch

    rng = random.Random(settings.seed)
    order = list(range(len(solutions)))
    rng.shuffle(order)
    n_valid = min(len(solutions) // 2, max(1, round(len(solutions) * settings.valid_fraction)))
    valid_solutions = [solutions[i] for i in order[:n_valid]]
    train_solutions = [solutions[i] for i in order[n_valid:]]
    if not train_solutions:
        raise DataError("too few solutions to train on (need at least 2)")
    valid = _encode(tokenizer, valid_solutions, delimiter)
    train = _encode(tokenizer, train_solutions, delimiter)
    keep_ids = sorted({t for tokens, p in train for t in tokens[p:]} | {t for tokens, p in valid for t in tokens[p:]})
    return _TrainingData(
        train=train,
        valid=valid,
        valid_solutions=valid_solutions,
        keep=_Keep(ids=torch.tensor(keep_ids, dtype=torch.long), negatives=settings.negatives),
        vocab_ids=output_vocab_ids(
            tokenizer, [s.completion for s in train_solutions], [s.prompt for s in solutions] + list(vocab_texts)
        ),
        pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )


def _optimizer(model: Any, settings: TrainSettings) -> tuple[Any, int]:
    """AdamW over the trainable parameters (no weight decay on norms and biases); and how many there are."""
    import torch

    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trained if p.dim() >= 2]
    no_decay = [p for n, p in trained if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.95),
    )
    return optimizer, sum(p.numel() for _, p in trained)


@dataclass
class _Trainer:
    """The training phase: its state, the checkpoint it resumes from and writes, the step loop."""

    model: Any  # the draft being trained
    optimizer: Any  # its AdamW
    data: _TrainingData  # what it learns
    settings: TrainSettings
    shape: DraftShape  # the draft's actual shape (a checkpoint of another shape is refused)
    checkpoint: Path  # <out>/checkpoint.pt
    report: TrainReport  # filled in as it goes (history, steps, seconds, train_loss)
    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # seconds spent in training steps (s)
    recent: list[float] = field(default_factory=list)  # losses of the last 20 steps

    @property
    def steps_per_epoch(self) -> int:
        return len(_batches(self.data.train, self.settings.batch_tokens, random.Random(0)))

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.steps_per_epoch * self.settings.epochs))

    def _identity(self) -> dict[str, Any]:
        return {"shape": asdict(self.shape), "examples": len(self.data.train) + len(self.data.valid)}

    def resume(self) -> None:
        """Continue from the checkpoint if there is one (refused when made with other settings or data)."""
        import torch

        if not self.checkpoint.is_file():
            return
        state = torch.load(self.checkpoint, weights_only=False)
        if {k: state.get(k) for k in ("shape", "examples")} != self._identity():
            raise ConfigError(
                f"{self.checkpoint} was made with other settings or data; delete it (or use another --out) to start over"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["seconds"]
        self.report.history = state["history"]
        logger.info("resuming training at step %d of %d", self.step, self.total_steps)

    def save(self) -> None:
        """Write the checkpoint (a temporary file renamed over it)."""
        import torch

        tmp = self.checkpoint.with_suffix(".tmp")
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "seconds": self.elapsed, "history": self.report.history, **self._identity()}  # fmt: skip
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def _step(self, indices: list[int], total: int, generator: Any) -> float:
        """One optimizer step on the batch ``indices``; returns its loss."""
        import torch

        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(self.step, total, self.settings)
        ids, mask, labels = _collate(self.data.train, indices, self.data.pad_id)
        loss, _, _ = _sampled_loss(self.model, ids, mask, labels, self.data.keep, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def run(self, progress: Callable[[int, int, float], None] | None = None) -> None:
        """Train up to `total_steps` (epochs of length-bucketed batches, seeded per epoch), a
        checkpoint every ``settings.checkpoint_every`` steps and at the end."""
        import torch

        total, per_epoch = self.total_steps, self.steps_per_epoch
        generator = torch.Generator().manual_seed(self.settings.seed + self.step)
        epoch = self.step // max(per_epoch, 1)
        while self.step < total:
            batches = _batches(self.data.train, self.settings.batch_tokens, random.Random(self.settings.seed * 1000 + epoch))
            for indices in batches[self.step - epoch * per_epoch :]:
                if self.step >= total:
                    break
                started = time.perf_counter()
                loss = self._step(indices, total, generator)
                self.step += 1
                self.elapsed += time.perf_counter() - started
                self.recent = (self.recent + [loss])[-20:]
                if self.step % 10 == 0 or self.step == total:
                    self.report.history.append({"step": self.step, "loss": round(sum(self.recent) / len(self.recent), 4)})
                if progress is not None:
                    progress(self.step, total, self.recent[-1])
                if self.step % self.settings.checkpoint_every == 0:
                    self.save()
            epoch += 1
        self.save()
        self.report.steps = self.step
        self.report.seconds = round(self.elapsed, 1)
        self.report.train_loss = round(sum(self.recent) / len(self.recent), 4) if self.recent else float("nan")


def _measure_held_out(model: Any, tokenizer: Any, data: _TrainingData, delimiter: str, report: TrainReport) -> None:
    """Fill in the held-out figures of ``report``: loss, agreement, step match, output-vocabulary coverage."""
    import torch

    stepped = _step_spans(tokenizer, data.valid_solutions, delimiter)
    allowed = torch.tensor(data.vocab_ids, dtype=torch.long)
    valid_loss, valid_accuracy, step_match, copy_match = _evaluate(model, data.valid, data.pad_id, stepped, allowed)
    report.valid_loss, report.valid_accuracy = round(valid_loss, 4), round(valid_accuracy, 4)
    report.valid_step_match, report.valid_step_match_copy = round(step_match, 4), round(copy_match, 4)
    report.output_vocab = len(data.vocab_ids)
    inside = set(data.vocab_ids)
    held_out = [t for tokens, p in data.valid for t in tokens[p:]]
    report.output_vocab_coverage = round(sum(t in inside for t in held_out) / max(len(held_out), 1), 4)
    report.vocab_ids = data.vocab_ids


def train_draft(
    config: LookaheadConfig,
    solutions: list[Solution],
    out_dir: Path,
    shape: DraftShape | None = None,
    settings: TrainSettings | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    vocab_texts: Sequence[str] = (),
) -> tuple[Any, Any, TrainReport]:
    """Train a draft on ``solutions``; resumes from ``out_dir/checkpoint.pt`` if present.

    The phases: tokenize and hold out (`_training_data`), build the network (`build_draft`),
    train with checkpoints (`_Trainer`), measure on the held-out solutions (`_measure_held_out`).
    Returns (model, tokenizer, report); ``report.vocab_ids`` is the draft's output vocabulary (the
    training completions' tokens, the prompts' and ``vocab_texts``', see `output_vocab_ids`).
    ``progress(step, total_steps, loss)`` is called per step. ``shape`` and ``settings`` default
    to `DraftShape()` and `TrainSettings()`.
    """
    import torch

    from lookahead.engines.hf import load_pretrained, resolve_model

    shape = shape or DraftShape()
    settings = settings or TrainSettings()
    if not solutions:
        raise DataError("no generated solutions to train on; run the generate phase first")
    target, tokenizer = load_pretrained(resolve_model(config.target).source, torch.float32)
    data = _training_data(tokenizer, solutions, config.step_delimiter, settings, vocab_texts)
    model, shape = build_draft(target, shape, settings.seed)
    del target
    model.train()
    optimizer, trained_parameters = _optimizer(model, settings)
    report = TrainReport(
        examples=len(data.train),
        valid_examples=len(data.valid),
        train_tokens=sum(len(t) - p for t, p in data.train),
        parameters=sum(p.numel() for p in model.parameters()),
        trained_parameters=trained_parameters,
        shape=asdict(shape),
    )
    trainer = _Trainer(model, optimizer, data, settings, shape, out_dir / CHECKPOINT_FILE, report)
    trainer.resume()
    trainer.run(progress)
    _measure_held_out(model, tokenizer, data, config.step_delimiter, report)
    return model, tokenizer, report


# ---------------------------------------------------------------------------------------------
# Saving


def save_draft(model: Any, tokenizer: Any, dest: Path, card: dict[str, Any], vocab_ids: Sequence[int] | None = None,
               embeddings_from: str | None = None) -> Path:
    """Write the draft (fp16 safetensors + tokenizer), ``distill.json``, a ``README.md`` model card
    and, given ``vocab_ids``, its output vocabulary (``output_vocab.json``, which the engine reads).

    ``embeddings_from`` (a model name as `EngineConfig.model` takes it; for drafts cut from the
    target, whose embeddings stay frozen): leave the token embeddings out and name that model in
    ``shared_weights.json``, so the engine takes them from it at load time."""
    import torch

    from lookahead.engines.hf import OUTPUT_VOCAB_FILE, SHARED_WEIGHTS_FILE

    dest.mkdir(parents=True, exist_ok=True)
    for stale in (OUTPUT_VOCAB_FILE, SHARED_WEIGHTS_FILE):
        (dest / stale).unlink(missing_ok=True)
    if vocab_ids:
        (dest / OUTPUT_VOCAB_FILE).write_text(json.dumps({
            "ids": list(vocab_ids),
            "about": "token ids this draft scores: its training solutions' tokens, the questions' and the special tokens",
        }) + "\n")
    model = model.to(torch.float16)
    model.config.dtype = "float16"
    if embeddings_from:
        # the frozen tables build_draft took from the target: its input embeddings and output layer
        tied = bool(model.config.tie_word_embeddings)  # then lm_head.weight IS the embedding table
        shared = ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"])
        state = {k: v for k, v in model.state_dict().items() if k not in shared and not (tied and k == "lm_head.weight")}
        model.save_pretrained(str(dest), safe_serialization=True, state_dict=state)
        (dest / SHARED_WEIGHTS_FILE).write_text(json.dumps({"from": embeddings_from, "tensors": shared}, indent=2) + "\n")
    else:
        model.save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    (dest / "distill.json").write_text(json.dumps(card, indent=2) + "\n")
    size_mb = sum(p.stat().st_size for p in dest.glob("*.safetensors")) / 1e6
    (dest / "README.md").write_text(card_markdown(card, size_mb, embeddings_from))
    return dest


def card_markdown(card: dict[str, Any], size_mb: float, embeddings_from: str | None = None) -> str:
    """The draft's ``README.md`` model card from its ``distill.json`` ``card`` (`model_card`) and
    the size of its weights (MB)."""
    report = card["train"]
    lines = [
        f"# {card['name']}",
        "",
        f"A step-level **draft** for `{card['target']}`, distilled from the target's own greedy solutions",
        "by `lookahead distill` (Lookahead Reasoning, arXiv 2506.19830). It shares the target's tokenizer,",
        "so it can also propose tokens for token-level speculative decoding.",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | {_shape_from(card['shape']).describe()} |",
        f"| parameters | {report['parameters'] / 1e6:.1f} M, {report.get('trained_parameters', report['parameters']) / 1e6:.1f} M "
        f"of them trained ({size_mb:.1f} MB fp16 safetensors"
        + (f"; the token embeddings are read from `{embeddings_from}` at load time, `shared_weights.json`" if embeddings_from else "")
        + ") |",
        (f"| data | {card['data']['solutions']} target solutions of `{card['data']['source']}` "
         f"(lines {card['data']['first_line']}..{card['data']['last_line']}), {report['train_tokens']} completion tokens "
         f"for training, {report['valid_examples']} solutions held out |"),
        (f"| training | {report['steps']} AdamW steps, {card['settings']['epochs']} epochs, peak lr {card['settings']['lr']}, "
         f"{card['settings']['batch_tokens']} tokens/step, {report['seconds']:.0f} s on {card['device']} |"),
        f"| final train loss | {report['train_loss']} (softmax over the solutions' tokens + {card['settings']['negatives']} random negatives) |",
        f"| held-out loss / top-1 agreement | {report['valid_loss']} / {report['valid_accuracy']:.3f} (full vocabulary, teacher forced) |",
        f"| held-out steps written token for token | {report.get('valid_step_match', float('nan')):.3f} (greedy, from the target's prefix)"
        + (f"; {report['valid_step_match_copy']:.3f} copying from the context (`draft.copy=true`)" if "valid_step_match_copy" in report else "")
        + " |",
        *([(f"| output vocabulary | {report['output_vocab']} token ids (`output_vocab.json`), "
            f"{report.get('output_vocab_coverage', float('nan')):.1%} of held-out target tokens |")]
          if report.get("output_vocab") else []),
        "",
        "Made with:",
        "",
        "```",
        card["command"],
        "```",
        "",
        "Limitations: trained only on GSM8K-style arithmetic word problems with the prompt of",
        "`lookahead`'s default config; elsewhere it will propose steps the target rarely accepts.",
        "The training questions come from GSM8K train (MIT licence); never from a test split.",
        "",
    ]
    return "\n".join(lines)


def _shape_from(values: dict[str, Any]) -> DraftShape:
    """A DraftShape from its asdict form (JSON turns the layer tuple into a list)."""
    values = dict(values)
    values["target_layers"] = tuple(values.get("target_layers") or ())
    return DraftShape(**values)


def command_line() -> str:
    """The command that is running, for model cards and benchmark JSON."""
    argv = list(sys.argv)
    if argv and argv[0].endswith(("lookahead", "__main__.py")):
        argv[0] = "lookahead"
    return " ".join(shlex.quote(a) for a in argv)


# ---------------------------------------------------------------------------------------------
# One `lookahead distill`: its questions, its phases, its model card


def model_reference(model: str) -> str:
    """``model`` as a draft's shared_weights.json names it: an alias or hub id as given, a path made absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def training_questions(data: Path | None, allow_test_split: bool, purpose: str) -> Path:
    """The questions file of a command that trains or calibrates (``data``, else GSM8K train,
    `default_questions_file`): a file whose name says ``test`` is refused unless allowed, since
    nothing could be evaluated on it afterwards. ``purpose`` names the work in the message."""
    path = data or default_questions_file()
    if "test" in path.name.lower() and not allow_test_split:
        raise ConfigError(f"{path} looks like a test split; {purpose} on training data (or pass --allow-test-split)")
    return path


def select_questions(path: Path, question_field: str | None, offset: int, limit: int | None) -> list[tuple[int, str]]:
    """Rows ``offset .. offset + limit`` of ``path`` (``limit`` None: to the end; ``question_field``
    None: ``question``); none left is a `ConfigError`."""
    field_name = "question" if question_field is None else question_field
    questions = read_questions(path, field_name)[offset : None if limit is None else offset + limit]
    if not questions:
        raise ConfigError(f"{path} has no rows after --offset {offset}")
    return questions


def draft_shape(hidden_size: int, layers: int, target_layers: tuple[int, ...] = ()) -> DraftShape:
    """The draft's shape from its width and depth: MLP 4x the width, a head per 64 dimensions, a
    key/value head per 128 (at least one each). ``target_layers``: cut from the target instead
    (its own sizes then apply, `build_draft`)."""
    return DraftShape(
        hidden_size=hidden_size,
        num_layers=layers,
        intermediate_size=4 * hidden_size,
        num_heads=max(1, hidden_size // 64),
        num_kv_heads=max(1, hidden_size // 128),
        target_layers=target_layers,
    )


@dataclass
class DistillRun:
    """One ``lookahead distill``: whose target is distilled, from which questions, into which folder."""

    config: LookaheadConfig  # the config whose target (and prompt) the draft learns
    out: Path  # the run folder: data.jsonl, checkpoint.pt, model/
    source: Path  # the questions file
    source_given: bool  # the file was named by the user (the card names its path, else its name)
    every_question: list[tuple[int, str]]  # all its rows (their tokens join the draft's output vocabulary)
    questions: list[tuple[int, str]]  # the rows to solve and learn (from --offset, at most --limit)

    @property
    def data_file(self) -> Path:
        return self.out / DATA_FILE

    def solved(self) -> int:
        """Questions of this run that already have a solution in `data_file` (count)."""
        done = {s.line for s in read_solutions(self.data_file)}
        return sum(1 for line, _ in self.questions if line in done)

    def generate(self, batch_size: int, progress: Callable[[int], None] | None = None) -> int:
        """Phase 1: the target solves the questions not solved yet (`generate_solutions`)."""
        return generate_solutions(self.config, self.questions, self.data_file, batch_size, progress=progress)

    def solutions(self) -> list[Solution]:
        """The generated solutions of this run's questions."""
        wanted = {line for line, _ in self.questions}
        return [s for s in read_solutions(self.data_file) if s.line in wanted]

    def train(self, shape: DraftShape, settings: TrainSettings,
              progress: Callable[[int, int, float], None] | None = None) -> tuple[Path, TrainReport]:
        """Phase 2 and 3: train the draft on the solutions (`train_draft`), save it with its model
        card into ``out/model`` (`save_draft`); returns where and the training report."""
        import torch

        solutions = self.solutions()
        torch.manual_seed(settings.seed)
        model, tokenizer, report = train_draft(self.config, solutions, self.out, shape, settings, progress=progress,
                                               vocab_texts=[q for _, q in self.every_question])  # tokens it may copy
        card = self.model_card(solutions, settings, report)
        dest = save_draft(model, tokenizer, self.out / MODEL_DIR, card, report.vocab_ids,
                          embeddings_from=model_reference(self.config.target.model) if shape.target_layers else None)
        return dest, report

    def model_card(self, solutions: Sequence[Solution], settings: TrainSettings, report: TrainReport) -> dict[str, Any]:
        """``distill.json``: the command, target, shape, settings, data and training figures."""
        from lookahead.config import redact_text

        lines = [s.line for s in solutions]
        return {
            "name": f"{self.out.name} draft",
            "target": self.config.target.model,
            "command": redact_text(command_line()),
            "device": "cpu",
            "shape": report.shape,
            "settings": asdict(settings),
            "data": {"source": str(self.source if self.source_given else self.source.name), "solutions": len(solutions),
                     "first_line": min(lines), "last_line": max(lines)},
            "train": {k: v for k, v in asdict(report).items() if k != "vocab_ids"},
        }


def prepare_run(config: LookaheadConfig, out: Path, data: Path | None, question_field: str | None, offset: int,
                limit: int | None, allow_test_split: bool = False) -> DistillRun:
    """Check everything a ``lookahead distill`` needs before any model loads: an in-process
    target, training data (not a test split), a writable ``out``, rows after ``offset``
    (``question_field`` None: ``question``; ``limit`` None: to the end)."""
    from lookahead.eval.harness import output_folder

    if config.target.backend != "hf":
        raise ConfigError("distill runs the target in process: target.backend must be hf")
    path = training_questions(data, allow_test_split, "distil")
    output_folder(out, "data.jsonl, checkpoint.pt and model/")
    every_question = read_questions(path, "question" if question_field is None else question_field)
    questions = every_question[offset : None if limit is None else offset + limit]
    if not questions:
        raise ConfigError(f"{path} has no rows after --offset {offset}")
    return DistillRun(config, out, path, data is not None, every_question, questions)
