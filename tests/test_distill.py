"""`lookahead distill`: bad input, resumable generation and training, a loadable draft."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lookahead import distill as d
from lookahead.config import EngineConfig, load_config
from lookahead.engines.hf import HFEngine
from lookahead.errors import ConfigError, DataError
from tests.tiny import tiny_llama, train_tokenizer


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory):
    """A tiny random target saved as a model directory (with its tokenizer)."""
    folder = tmp_path_factory.mktemp("target")
    tokenizer = train_tokenizer(300)
    tiny_llama(tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def questions_file(tmp_path):
    path = tmp_path / "train.jsonl"
    rows = [{"question": f"Step {i}: add the numbers {i} and {i + 1}."} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_config(folder):
    return load_config("default", [f"target.model={folder}", f"draft.model={folder}", "max_total_tokens=24"])


def test_read_questions_names_file_and_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        d.read_questions(tmp_path / "missing.jsonl")
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a"}\n{"problem": "b"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: the row has no 'question' field"):
        d.read_questions(path)
    path.write_text('{"question": "a"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        d.read_questions(path)
    path.write_text('{"problem": "a"}\n\n{"problem": "b"}\n')
    assert d.read_questions(path, "problem") == [(1, "a"), (3, "b")]


def test_cut_after_answer_keeps_the_answer_step():
    pattern = re.compile(load_config("default").final_answer_pattern)
    text = "First, 2 + 2 = 4.\n\nThe final answer is \\boxed{4}.\n\nExtra rambling.\n\n"
    assert d._cut_after_answer(text, "\n\n", pattern) == ("First, 2 + 2 = 4.\n\nThe final answer is \\boxed{4}.\n\n", True)
    assert d._cut_after_answer("no answer here\n\n", "\n\n", pattern) == ("no answer here\n\n", False)


def test_generation_resumes_without_duplicates(tiny_target, questions_file, tmp_path):
    cfg = tiny_config(tiny_target)
    out = tmp_path / "data.jsonl"
    questions = d.read_questions(questions_file)
    assert d.generate_solutions(cfg, questions[:2], out, batch_size=2) == 2
    with out.open("a") as handle:  # a run killed mid-write leaves a torn line
        handle.write('{"line": 5, "quest')
    assert d.generate_solutions(cfg, questions, out, batch_size=4) == 4
    solutions = d.read_solutions(out)
    assert sorted(s.line for s in solutions) == [1, 2, 3, 4, 5, 6]
    assert all(s.prompt.endswith("assistant: ") and s.completion for s in solutions)
    assert d.generate_solutions(cfg, questions, out) == 0  # nothing left to do


def test_generation_is_the_targets_greedy_output(tiny_target, questions_file, tmp_path):
    """The training data is what the reasoner's target engine writes for the same prompt."""
    cfg = tiny_config(tiny_target)
    out = tmp_path / "data.jsonl"
    d.generate_solutions(cfg, d.read_questions(questions_file)[:3], out, batch_size=3, max_new_tokens=12)
    engine = HFEngine.from_config(EngineConfig(model=str(tiny_target), pad_batches=False))
    from lookahead.config import SamplingParams

    for s in d.read_solutions(out):
        assert engine.format_chat([{"role": "user", "content": cfg.prompt_template.format(question=s.question)}]) == s.prompt
        expected = engine.generate([s.prompt], SamplingParams(max_new_tokens=12))[0].text
        assert d._cut_after_answer(expected, "\n\n", re.compile(cfg.final_answer_pattern))[0] == s.completion
    engine.shutdown()


def test_training_resumes_and_saves_a_loadable_draft(tiny_target, questions_file, tmp_path):
    cfg = tiny_config(tiny_target)
    data = tmp_path / "data.jsonl"
    d.generate_solutions(cfg, d.read_questions(questions_file), data, batch_size=6)
    solutions = d.read_solutions(data)
    shape = d.DraftShape(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64, max_positions=512)
    settings = d.TrainSettings(epochs=6, batch_tokens=64, lr=1e-2, warmup_steps=2, negatives=16, checkpoint_every=2)
    steps = []
    model, tokenizer, first = d.train_draft(cfg, solutions, tmp_path, shape, settings, progress=lambda s, t, loss: steps.append(s))
    assert first.steps == steps[-1] and first.steps > 4
    assert first.history[0]["loss"] > first.train_loss  # it learned something
    # a rerun with more epochs resumes from the checkpoint instead of starting over
    more = d.TrainSettings(**{**d.asdict(settings), "epochs": 8})
    resumed_steps = []
    _, _, second = d.train_draft(cfg, solutions, tmp_path, shape, more, progress=lambda s, t, loss: resumed_steps.append(s))
    assert resumed_steps[0] == first.steps + 1 and second.steps > first.steps
    with pytest.raises(ConfigError, match="other settings"):
        d.train_draft(cfg, solutions, tmp_path, d.DraftShape(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1), more)
    card = {"name": "t", "target": str(tiny_target), "command": "lookahead distill", "device": "cpu",
            "shape": d.asdict(shape), "settings": d.asdict(settings),
            "data": {"source": "train.jsonl", "solutions": 6, "first_line": 1, "last_line": 6}, "train": d.asdict(second)}
    # the output vocabulary: every token of the training completions and the prompts, and no more
    assert second.output_vocab == len(second.vocab_ids) < tokenizer.vocab_size
    used = {t for s in solutions for t in tokenizer(s.prompt + s.completion, add_special_tokens=False).input_ids}
    assert used - set(second.vocab_ids) <= {t for s in solutions for t in tokenizer(s.completion, add_special_tokens=False).input_ids}
    assert 0 < second.output_vocab_coverage <= 1
    dest = d.save_draft(model, tokenizer, tmp_path / "model", card, second.vocab_ids)
    assert "lookahead distill" in (dest / "README.md").read_text() and "output vocabulary" in (dest / "README.md").read_text()
    draft = HFEngine.from_config(EngineConfig(model=str(dest), pad_batches=False))
    assert draft.model.dtype == torch.float32  # fp16 on disk, loaded as the config's dtype
    from lookahead.engines.hf import SubsetLMHead

    assert isinstance(draft.model.get_output_embeddings(), SubsetLMHead)  # the engine scores only those ids
    from lookahead.config import SamplingParams

    assert draft.generate([solutions[0].prompt], SamplingParams(max_new_tokens=4))[0].completion_tokens == 4
    draft.shutdown()


def test_cli_refuses_a_test_split_and_missing_data(tmp_path):
    from typer.testing import CliRunner

    from lookahead.cli import app

    runner = CliRunner()
    test_file = tmp_path / "test.jsonl"
    test_file.write_text('{"question": "a"}\n')
    result = runner.invoke(app, ["distill", "--data", str(test_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "test split" in result.output
    result = runner.invoke(app, ["distill", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in result.output
    for bad in (["--lr", "-1"], ["--epochs", "0"], ["--layers", "0"], ["--target-layers", "0,x"]):
        result = runner.invoke(app, ["distill", *bad, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2 and "must be" in result.output, bad
    train_file = tmp_path / "train.jsonl"  # given, so the check does not depend on a data folder nearby
    train_file.write_text('{"question": "a"}\n')
    result = runner.invoke(app, ["distill", "--data", str(train_file), "--out", str(test_file)])
    assert result.exit_code == 2 and "is a file" in result.output


def test_encode_feeds_every_step_the_context_the_loop_feeds():
    """Training tokens = the loop's: every step's context (prompt + earlier steps, tokenized as a
    text to continue) is a prefix of the solution's ids, so the draft never trains on the
    end-of-text form of the delimiter that the loop never shows it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lookahead.engines.hf import encode_continuations

    # a BPE that, like SmolLM2's, has a "\n\n" token used only where a text ends on it
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    corpus = ["Step 1: add.\n\n", "Step 2: multiply.\n\n", "The final answer is 12.\n\n", "user: q\nassistant: A"]
    # (every character of the solution below, and "A": the probe of encode_continuations)
    raw.train_from_iterator(corpus * 50, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw)
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    assert encode("add.\n\nStep") != encode("add.\n\n") + encode("Step")  # the two forms differ
    solution = d.Solution(1, "q", "user: q\nassistant: ", "Step 1: add.\n\nStep 2: multiply.\n\nThe final answer is 12.\n\n", "answer")
    steps = ["Step 1: add.\n\n", "Step 2: multiply.\n\n", "The final answer is 12.\n\n"]
    [(ids, prompt_len)] = d._encode(tokenizer, [solution], "\n\n")
    assert prompt_len == len(encode(solution.prompt))
    assert ids == encode_continuations(tokenizer, [solution.prompt + "".join(steps)])[0]
    bounds = []
    for k in range(4):
        context = encode_continuations(tokenizer, [solution.prompt + "".join(steps[:k])])[0]
        assert ids[: len(context)] == context, k
        bounds.append(len(context))
    assert ids[bounds[1] - 1] != encode("add.\n\n")[-1]  # not the end-of-text "\n\n" token
    [(same, _, spans)] = d._step_spans(tokenizer, [solution], "\n\n")
    assert same == ids and spans == list(zip(bounds, bounds[1:], strict=False))


def test_the_shipped_draft_loads_by_name():
    """The default config's draft is the distilled model shipped in lookahead/models/."""
    from lookahead.config import SamplingParams
    from lookahead.engines.hf import SHIPPED_MODELS_DIR, resolve_model

    cfg = load_config("default")
    resolved = resolve_model(cfg.draft)
    assert resolved.source == str(SHIPPED_MODELS_DIR / cfg.draft.model)
    card = json.loads((SHIPPED_MODELS_DIR / cfg.draft.model / "distill.json").read_text())
    assert card["data"]["source"] == "train.jsonl" and "lookahead distill" in card["command"]
    engine = HFEngine.from_config(EngineConfig(model=cfg.draft.model, pad_batches=False))
    assert engine.model.config.vocab_size == 49152  # SmolLM2's vocabulary: it shares the target's tokenizer
    prompt = engine.format_chat([{"role": "user", "content": "What is 2 + 3?"}])
    assert engine.generate([prompt], SamplingParams(max_new_tokens=3))[0].completion_tokens == 3
    engine.shutdown()


def test_a_draft_cut_from_the_target_starts_as_the_target(tiny_target, tmp_path):
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(tiny_target).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    whole, shape = d.build_draft(target, d.DraftShape(target_layers=(0, 1)), seed=0)  # all of its 2 layers
    assert shape.hidden_size == target.config.hidden_size and shape.num_layers == 2
    with torch.no_grad():
        assert torch.allclose(whole(input_ids=ids).logits, target(input_ids=ids).logits, atol=1e-5)
    cut, shape = d.build_draft(target, d.DraftShape(target_layers=(1,)), seed=0)
    assert shape.num_layers == cut.config.num_hidden_layers == 1 and shape.target_layers == (1,)
    assert not cut.get_input_embeddings().weight.requires_grad  # the target's embeddings stay as they are
    assert any(p.requires_grad for p in cut.model.layers.parameters())
    assert len(target.model.layers) == 2  # the target itself is untouched
    with torch.no_grad():  # the kept layer is the target's layer 1, now at position 0 of the stack
        assert torch.equal(cut.model.layers[0].mlp.up_proj.weight, target.model.layers[1].mlp.up_proj.weight)
        cut.save_pretrained(tmp_path / "cut")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    assert reloaded.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    for bad in ((2,), (1, 0), (0, 0), (-1,)):
        with pytest.raises(ConfigError, match="target_layers"):
            d.build_draft(target, d.DraftShape(target_layers=bad), seed=0)


def test_step_match_counts_steps_written_token_for_token():
    class Oracle(torch.nn.Module):
        """Predicts the next token of ``sequence`` everywhere except at position ``wrong``."""

        def __init__(self, sequence, wrong):
            super().__init__()
            self.sequence, self.wrong = sequence, wrong

        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 100)
            for i in range(input_ids.shape[1] - 1):
                logits[:, i, self.sequence[i + 1] if i != self.wrong else 99] = 1.0
            return type("Out", (), {"logits": logits})()

    sequence = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # prompt 1..3, steps 4..5, 6..7, 8..9
    stepped = [(sequence, 3, [(3, 5), (5, 7), (7, 9)])]
    examples = [(sequence, 3)]
    assert d._evaluate(Oracle(sequence, wrong=-1), examples, 0, stepped)[2] == 1.0
    # position 5 predicts token 6, the first token of the second step: only that step is lost
    assert d._evaluate(Oracle(sequence, wrong=5), examples, 0, stepped)[2] == pytest.approx(2 / 3)
    assert d._evaluate(Oracle(sequence, wrong=2), examples, 0, stepped)[2] == pytest.approx(2 / 3)  # predicts token 4
    assert d._evaluate(Oracle(sequence, wrong=5), examples, 0, stepped)[3] == pytest.approx(2 / 3)  # nothing to copy

    # the step repeats the prompt: copying (3-gram 1, 2, 3 -> 4) fixes the draft's one wrong token
    repeated = [1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]
    result = d._evaluate(Oracle(repeated, wrong=8), [(repeated, 6)], 0, [(repeated, 6, [(6, 12)])])
    assert result[2] == 0.0 and result[3] == 1.0


def test_a_cut_draft_ships_without_the_targets_embeddings_and_loads_them_back(tiny_target, tmp_path):
    """Guards shared_weights.json: the saved cut draft leaves out the frozen embedding table and
    the engine fills it from the target, giving the model that was trained; a missing donor
    tensor is a clear ModelLoadError."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lookahead.config import SamplingParams
    from lookahead.engines.hf import SHARED_WEIGHTS_FILE
    from lookahead.errors import ModelLoadError

    target = AutoModelForCausalLM.from_pretrained(tiny_target).eval()
    cut, shape = d.build_draft(target, d.DraftShape(target_layers=(1,)), seed=0)
    with torch.no_grad():
        cut.model.layers[0].mlp.up_proj.weight.mul_(0.5)  # "trained": differs from the target's layer
    card = {"name": "t", "target": str(tiny_target), "command": "lookahead distill", "device": "cpu",
            "shape": d.asdict(shape), "settings": d.asdict(d.TrainSettings()),
            "data": {"source": "train.jsonl", "solutions": 1, "first_line": 1, "last_line": 1},
            "train": d.asdict(d.TrainReport(parameters=1, trained_parameters=1))}
    tokenizer = AutoTokenizer.from_pretrained(tiny_target)
    dest = d.save_draft(cut, tokenizer, tmp_path / "cut", card, embeddings_from=str(tiny_target))
    with safe_open(str(dest / "model.safetensors"), framework="pt") as handle:
        assert "model.embed_tokens.weight" not in handle.keys() and "lm_head.weight" not in handle.keys()
    assert "read from" in (dest / "README.md").read_text()
    engine = HFEngine.from_config(EngineConfig(model=str(dest), pad_batches=False))
    loaded = engine.model
    assert torch.equal(loaded.get_input_embeddings().weight, target.get_input_embeddings().weight)
    assert torch.equal(loaded.model.layers[0].mlp.up_proj.weight, cut.model.layers[0].mlp.up_proj.weight.float())
    if target.config.tie_word_embeddings:
        assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    assert engine.generate(["hello"], SamplingParams(max_new_tokens=3))[0].completion_tokens == 3
    engine.shutdown()
    (dest / SHARED_WEIGHTS_FILE).write_text(json.dumps({"from": str(tiny_target), "tensors": ["model.nope.weight"]}))
    with pytest.raises(ModelLoadError, match="not found"):
        HFEngine.from_config(EngineConfig(model=str(dest), pad_batches=False))
    (dest / SHARED_WEIGHTS_FILE).write_text('{"from": "%s", "tensors": ["model.embed_tokens.weight"]}' % (tmp_path / "gone"))
    with pytest.raises(ModelLoadError, match="shared_weights.json takes tensors from .*cannot be found"):
        HFEngine.from_config(EngineConfig(model=str(dest), pad_batches=False))
