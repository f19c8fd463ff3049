"""Tasks: deterministic generation, disjoint splits, validation for a model, and clear errors."""

from __future__ import annotations

import re
import textwrap

import pytest
import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

import circuitfind as cf
from circuitfind.task import Example, Task, builtin_tasks, load_task
from tests.conftest import tiny_hf

SPLIT = re.compile(r"\d\d|[,.]|[^\s\d,.]+")
STRING_TASKS = ["ioi", "greater-than", "sva", "gendered-pronoun", "capital-country", "arithmetic", "docstring", "mcqa"]


def _word_model():
    """A tiny GPT-2 with a word-level tokenizer covering every built-in string task's words."""
    words = set()
    for name in STRING_TASKS:
        for split, n in (("train", 100), ("test", 25)):
            for ex in load_task(name, n=n, split=split).examples():
                for text in [ex.clean, ex.corrupt] + _answers(ex.correct) + _answers(ex.wrong):
                    words.update(SPLIT.findall(text))
    vocab = {"[PAD]": 0, "[BOS]": 1, "[UNK]": 2} | {w: i + 3 for i, w in enumerate(sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d\d"), "isolated"),
        pre_tokenizers.Split(Regex(r"[,.]"), "isolated")])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", pad_token="[PAD]",
                                                unk_token="[UNK]")
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(vocab), n_positions=64,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return cf.from_hf(transformers.GPT2LMHeadModel(config).eval(), tokenizer=fast, name="word-gpt2")


def _answers(a):
    return [a] if isinstance(a, str) else [x for x in a if isinstance(x, str)]


@pytest.fixture(scope="module")
def word_model():
    return _word_model()


def test_every_builtin_is_listed_with_description_and_metric():
    tasks = builtin_tasks()
    assert {"ioi", "greater-than", "induction", "sva", "tracr-reverse", "tracr-xproportion"} <= set(tasks)
    for cls in tasks.values():
        assert cls.description and cls.citation
        assert cls.metric in cf.metrics.METRICS or callable(cls.metric)


def _model_for(name, word_model):
    """The word model, or the one model a token-level task is written for (tracr)."""
    models = builtin_tasks()[name].models
    return cf.load_model(models[0]) if models else word_model


@pytest.mark.parametrize("name", sorted(builtin_tasks()))
def test_builtin_generates_deterministically_and_validates(name, word_model):
    word_model = _model_for(name, word_model)
    a, b = load_task(name, n=20, seed=3), load_task(name, n=20, seed=3)
    assert a.examples(word_model) == b.examples(word_model)
    assert load_task(name, n=20, seed=4).examples(word_model) != a.examples(word_model)
    batch = a.batch(word_model)
    assert batch.size == 20 and batch.clean.tokens.shape == batch.corrupt.tokens.shape
    values = a.check_metric(word_model, batch)
    assert values.shape == (20,) and torch.isfinite(values).all()


@pytest.mark.parametrize("name", sorted(builtin_tasks()))
def test_train_and_test_never_overlap(name, word_model):
    word_model = _model_for(name, word_model)
    train = {repr(e.clean) for e in load_task(name, n=40).examples(word_model)}
    test = {repr(e.clean) for e in load_task(name, n=10, split="test").examples(word_model)}
    assert train and test and not train & test


def test_ioi_invariants():
    for ex in load_task("ioi", n=50).examples():
        io, s = ex.correct.strip(), ex.wrong.strip()
        words = SPLIT.findall(ex.clean)
        assert words.count(io) == 1 and words.count(s) == 2
        assert io not in SPLIT.findall(ex.corrupt) or words != SPLIT.findall(ex.corrupt)


def test_greater_than_invariants():
    for ex in load_task("greater-than", n=50).examples():
        start = int(ex.clean.split("year ")[1][2:4])
        assert all(int(y) > start for y in ex.correct) and all(int(y) <= start for y in ex.wrong)
        assert ex.corrupt.split("year ")[1][2:4] == "01"


def test_induction_invariants(word_model):
    L = load_task("induction").length
    for ex in load_task("induction", n=20).examples(word_model):
        first = ex.clean[:L]
        assert ex.clean[L:] == first[:-1] and ex.correct == first[-1]  # A A[:-1] → A[-1]
        assert ex.corrupt[L:] == ex.clean[L:] and not set(ex.corrupt[:L]) & set(first)


def test_sva_verb_agrees_with_subject():
    for ex in load_task("sva", n=30).examples():
        subject = ex.clean.split()[1]
        assert (ex.correct in (" are", " were", " have")) == subject.endswith("s")


USER_TASK = '''
import circuitfind as cf

NAMES = ["Mary", "John", "Alice", "Bob"]

class Greeting(cf.Task):
    name = "greeting"
    description = "Who is greeted back."
    metric = "logit-diff"

    def example(self, rng, words):
        a, b = rng.sample(NAMES, 2)
        return cf.Example(clean=f"{a} said hello to {b} and {b} said hello to",
                          corrupt=f"{b} said hello to {a} and {a} said hello to", correct=" " + a, wrong=" " + b)

class NotATask:
    pass
'''


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_task.py"
    path.write_text(textwrap.dedent(USER_TASK))
    return path


def test_user_task_loads_by_path(user_file):
    task = load_task(f"{user_file}:Greeting", n=5)
    assert task.name == "greeting" and len(task.examples()) == 5


def test_user_task_from_the_cli(user_file, capsys):
    from circuitfind.cli import main
    assert main(["tasks", "show", f"{user_file}:Greeting", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "said hello to" in out and "greeting: Who is greeted back. (metric: logit-diff)" in out
    bare = user_file.with_name("bare.py")  # a task without a description shows no empty ": "
    bare.write_text(user_file.read_text().replace('    description = "Who is greeted back."\n', ""))
    assert main(["tasks", "show", f"{bare}:Greeting", "-n", "1"]) == 0
    assert "greeting (metric: logit-diff)" in capsys.readouterr().out
    # --model: the examples that model sees (its single-token words only), checked as discover checks them
    model = _word_model()
    model_dir = user_file.parent / "word-model"
    tiny_hf("gpt2", vocab_size=model.cfg.d_vocab).save_pretrained(model_dir)
    model.tokenizer.save_pretrained(model_dir)
    assert main(["tasks", "show", f"{user_file}:Greeting", "-n", "2", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    shown = load_task(f"{user_file}:Greeting", n=2).examples(cf.load_model(str(model_dir)))
    assert out[1] == f"  clean:   {shown[0].clean!r}" and out[-1].startswith(f"checked for {model_dir}: prompts of ")
    assert main(["tasks", "show", "ioi", "-n", "1", "--model", "toy-induction"]) == 2  # text for a token-level model
    assert "'toy-induction' has no tokenizer" in capsys.readouterr().err


def test_another_metric_for_one_loaded_task(user_file, capsys):
    """load_task(metric=) changes that instance (and its other split) only; unknown names are refused."""
    from circuitfind.cli import main
    task = load_task("greater-than", n=4, metric="logit-diff")
    assert task.metric == "logit-diff" and task.with_split("test", n=2).metric == "logit-diff"
    assert load_task("greater-than", n=4).metric == "prob-diff"
    assert load_task(f"{user_file}:Greeting", n=2, metric="kl").with_split("test").metric == "kl"
    with pytest.raises(cf.MetricError, match="unknown metric 'accuracy'"):
        load_task("greater-than", metric="accuracy")
    with pytest.raises(cf.TaskError, match="loaded by name"):
        load_task(task, metric="kl")
    assert main(["tasks", "show", "greater-than", "-n", "1", "--metric", "logit-diff"]) == 0
    assert "(metric: logit-diff)" in capsys.readouterr().out


def test_cli_lists_builtin_tasks(capsys):
    from circuitfind.cli import main
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in builtin_tasks():
        assert name in out


@pytest.mark.parametrize("spec, match", [
    ("no-such-task", "built-in tasks: "),
    ("/nope/task.py:X", "does not exist"),
])
def test_bad_task_names(spec, match):
    with pytest.raises(cf.TaskError, match=match):
        load_task(spec)


def test_class_that_is_not_a_task(user_file):
    with pytest.raises(cf.TaskError, match="not a circuitfind.Task"):
        load_task(f"{user_file}:NotATask")
    with pytest.raises(cf.TaskError, match="no class"):
        load_task(f"{user_file}:Missing")
    with pytest.raises(cf.TaskError, match=r"class too: .*my_task.py:ClassName' \(the file defines Greeting\)"):
        load_task(str(user_file))


def test_a_task_without_a_name_is_named_after_its_class(tmp_path):
    path = tmp_path / "nameless.py"
    path.write_text(textwrap.dedent(USER_TASK).replace('name = "greeting"', ""))
    assert load_task(f"{path}:Greeting", n=2).name == "Greeting"  # not "", which stores and reports show


class _Fixed(Task):
    name = "fixed"
    metric = "logit-diff"
    clean, corrupt, correct, wrong = "Mary said", "John said", " Mary", " John"

    def example(self, rng, words):
        return Example(self.clean, self.corrupt, self.correct, self.wrong)


def test_more_examples_than_the_task_can_make():
    with pytest.raises(cf.TaskError, match="could generate only"):
        _Fixed(n=5).examples()


@pytest.mark.parametrize("field, value, match", [
    ("correct", " Mary John", "2 tokens"),
    ("correct", " Zyxwvut", "does not know"),
    ("corrupt", "John said hello", "must be equally long"),
    ("wrong", " Mary", "also a wrong answer"),
    ("correct", 10_000, "answer id 10000 is not a logit"),  # an id past the vocabulary: not an IndexError later
])
def test_validation_errors(word_model, field, value, match):
    cls = type("Bad", (_Fixed,), {field: value, "test_fraction": 0.0})
    with pytest.raises(cf.TaskError, match=match):
        cls(n=1).batch(word_model)


def test_nan_metric_is_caught(word_model):
    nan = type("NaNTask", (_Fixed,), {"metric": staticmethod(lambda logits, t: logits[:, 0] * float("nan")),
                                       "test_fraction": 0.0})
    with pytest.raises(cf.MetricError, match="NaN"):
        nan(n=1).check_metric(word_model)


def test_bad_n_and_split():
    with pytest.raises(cf.TaskError, match="positive"):
        load_task("ioi", n=0)
    with pytest.raises(cf.TaskError, match="split"):
        load_task("ioi", split="validation")


def test_gendered_pronoun_matches_the_name():
    from circuitfind.tasks.gendered_pronoun import FEMALE
    for ex in load_task("gendered-pronoun", n=30).examples():
        name = [w for w in ex.clean.replace(",", " ").split() if w[0].isupper() and w not in ("So", "Well", "Yes")][0]
        assert ex.correct == (" she" if name in FEMALE else " he") and ex.wrong != ex.correct


def test_capital_is_the_named_countrys():
    from circuitfind.tasks.capital_country import PAIRS
    capital = dict(PAIRS)
    for ex in load_task("capital-country", n=30).examples():
        country = next(c for c in capital if c in ex.clean)
        assert ex.correct == " " + capital[country] and ex.wrong != ex.correct


def test_arithmetic_sums():
    for ex in load_task("arithmetic", n=30).examples():
        a, _, b, _ = ex.clean.split()
        c = ex.corrupt.split()[0]
        assert int(ex.correct) == int(a) + int(b) and int(ex.wrong) == int(c) + int(b)


def test_docstring_answer_is_the_next_parameter():
    for ex in load_task("docstring", n=30).examples():
        params = ex.clean.split("(self, ")[1].split(")")[0].split(", ")
        documented = [line.split(":param ")[1].split(":")[0] for line in ex.clean.splitlines() if ":param " in line]
        assert documented == params[:2] and ex.correct == " " + params[2]


def test_mcqa_letter_points_at_the_answer():
    from circuitfind.tasks.mcqa import QUESTIONS
    answers = {q: a for q, a, _ in QUESTIONS}
    for ex in load_task("mcqa", n=30).examples():
        question = ex.clean.split("Question: ")[1].split("?")[0] + "?"
        letter = ex.correct.strip()
        assert ex.clean.split(f"{letter}. ")[1].split(" ")[0] == answers[question]
        assert ex.corrupt.split(f"{ex.wrong.strip()}. ")[1].split(" ")[0] == answers[question]


def test_example_must_return_an_example():
    bad = type("Bad", (_Fixed,), {"example": lambda self, rng, words: ("Mary said", "John said")})
    with pytest.raises(cf.TaskError, match="must return a circuitfind Example"):
        bad(n=1).examples()


def test_word_lists_emptied_by_the_tokenizer(word_model):
    """A tokenizer that keeps none of a task's names as single tokens: a TaskError, not a crash."""
    class NoNames(Task):
        name = "no-names"

        def example(self, rng, words):
            a, b = rng.sample(words.single(["Zyxwvut", "Qrstuvw"]), 2)  # not in the word model's vocabulary
            return Example(f"{a} said", f"{b} said", " " + a, " " + b)

    with pytest.raises(cf.TaskError, match="too few single-token words"):
        NoNames(n=2).examples(word_model)


def test_tracr_task_invariants():
    from circuitfind.models.zoo import tracr_meta
    meta = tracr_meta("tracr-reverse")
    decode = {v: k for k, v in meta["input_encoding"].items()}
    positions = set()
    for ex in load_task("tracr-reverse", n=30).examples():
        seq, other = [decode[t] for t in ex.clean[1:]], [decode[t] for t in ex.corrupt[1:]]
        n, p = len(seq), ex.answer_pos  # position p (BOS is 0) outputs token n − p: reversed
        assert ex.clean[0] == meta["input_encoding"]["BOS"] and meta["output_values"][ex.correct] == seq[n - p]
        assert ex.correct not in ex.wrong and len(ex.corrupt) == len(ex.clean) and other[n - p] != seq[n - p]
        positions.add(p)
    assert positions == {1, 2, 3, 4, 5}  # every position is read, as ACDC's metrics read them all
    meta = tracr_meta("tracr-xproportion")
    decode = {v: k for k, v in meta["input_encoding"].items()}
    for ex in load_task("tracr-xproportion", n=30).examples():
        seq = [decode[t] for t in ex.clean[1:ex.answer_pos + 1]]
        assert ex.value == seq.count("x") / len(seq)


def test_a_tracr_task_refuses_another_models_vocabulary():
    """tracr tasks are token ids of one compiled model: any other model would read other tokens."""
    other = cf.load_model("tracr-xproportion")
    with pytest.raises(cf.TaskError, match="token ids of tracr-reverse; model 'tracr-xproportion'"):
        load_task("tracr-reverse", n=4).batch(other)
    assert load_task("tracr-reverse", n=4).batch(cf.load_model("tracr-reverse")).size == 4


def test_greater_than_without_the_corrupted_year_is_a_task_error():
    """A vocabulary without "01" cannot make greater-than's corrupted prompt: say so (no endless retry)."""
    from circuitfind.task import Words

    class WithoutZeroOne(Words):
        def single(self, words, prefix=" "):
            return [w for w in words if w != "01"]

    with pytest.raises(cf.TaskError, match="'01'"):
        load_task("greater-than", n=2)._generate(WithoutZeroOne())


def test_the_documented_task_example_runs(tmp_path):
    """The task a reader copies from the task tutorial must load, batch and give discover its test split
    (its first version, five pairs and one template, could not make a single test example)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "write-a-task.md").read_text()
    source = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "class Capital" in b)
    (tmp_path / "my_task.py").write_text(source)
    model = cf.load_model("toy-lm")
    task = load_task(f"{tmp_path / 'my_task.py'}:Capital", n=20)
    assert task.batch(model).size == 20 and task.with_split("test", n=5).batch(model).size == 5


def test_an_answer_position_is_read_where_the_example_says():
    """Example(answer_pos=p): the metric reads position p of both prompts (the engine's answer_pos); a position
    outside the prompt is refused naming the example."""
    model = cf.load_model("tracr-reverse")

    class At(cf.Task):
        name = "at"
        models = ("tracr-reverse",)
        position = 2

        def example(self, rng, words):
            seq = [rng.randrange(1, 4) for _ in range(4)]
            return Example(clean=[0] + seq, corrupt=[0] + seq[::-1], correct=0, wrong=1, answer_pos=self.position)

    batch = At(n=5).batch(model)
    assert batch.clean.answer_pos.tolist() == [2] * 5 == batch.corrupt.answer_pos.tolist()
    At.position = 5
    with pytest.raises(cf.TaskError, match="example 0: answer_pos 5 is not a position of its 5-token prompt"):
        At(n=5).batch(model)
