"""Train `toy-lm`: a small GPT-2-architecture LM with a word-level tokenizer, on a corpus generated
from the built-in string tasks (their train splits, completed with the correct answer), induction
over word lists, and filler text. Accuracy on each task's *test* split is measured and saved.

    python scripts/train_toy_lm.py [--steps N] [--out DIR]    # writes circuitfind/zoo_models/toy-lm/

Wall time on 2 CPU cores: 1009 s (about 17 minutes; nothing else running). Seeded: the same
command gives the same weights — a second run reproduced the committed files bit for bit. Accuracy is the task's own contrast: the correct
answer's logit beats every wrong answer's (`cf.task_accuracy`).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

import circuitfind as cf
from circuitfind.evaluate import task_accuracy
from circuitfind.task import load_task

TASKS = ["ioi", "greater-than", "sva", "gendered-pronoun", "capital-country", "arithmetic", "docstring", "mcqa"]
OUT = Path(__file__).resolve().parent.parent / "circuitfind" / "zoo_models" / "toy-lm"
FILLER = ["the weather was mild that day", "people walked along the river", "a small dog ran across the garden",
          "the market opened early in the morning", "she read a book near the window",
          "they talked about the long journey", "the city was quiet after the rain"]


def corpus(rng: random.Random, per_task: int) -> tuple[list[str], list[str]]:
    """Training lines, and the corrupted prompts (whose words the vocabulary needs too)."""
    lines, corrupted = [], []
    for name in TASKS:
        if name == "arithmetic":  # every operand pair the task can draw, so sums are facts the model knows
            lines += [f"{a} + {b} = {a + b}" for a in range(10, 50) for b in range(10, 50)]
            continue
        for ex in load_task(name, n=per_task, seed=1).examples():
            answer = rng.choice(ex.correct) if isinstance(ex.correct, list) else ex.correct
            lines.append(ex.clean + answer)
            corrupted.append(ex.corrupt)
    words = sorted({w for line in lines for w in line.split() if w.isalpha()})
    for _ in range(per_task):  # induction over word lists: a random phrase, repeated
        phrase = " ".join(rng.choice(words) for _ in range(rng.randint(3, 6)))
        lines.append(phrase + " , " + phrase)
    lines += [rng.choice(FILLER) for _ in range(per_task // 2)]
    for ex in load_task("ioi", n=2 * per_task, seed=2).examples():  # IOI is the hardest: twice the data
        lines.append(ex.clean + ex.correct)
    rng.shuffle(lines)
    return lines, corrupted


def tokenizer_for(lines: list[str]) -> transformers.PreTrainedTokenizerFast:
    pre = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\d\d"), "isolated"),
                                   pre_tokenizers.Punctuation()])
    words = set()
    for line in lines:
        words.update(w for w, _ in pre.pre_tokenize_str(line))
    vocab = {"[PAD]": 0, "[BOS]": 1, "[UNK]": 2} | {w: i + 3 for i, w in enumerate(sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="[BOS]", pad_token="[PAD]",
                                                unk_token="[UNK]")


def random_repeat(rng: random.Random, vocab_size: int, length: int = 8) -> list[int]:
    """The induction task's format in token ids: [BOS] A A for A random distinct non-special tokens."""
    a = rng.sample(range(3, vocab_size), length)
    return [1] + a + a


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=7000)
    parser.add_argument("--per-task", type=int, default=800)
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the model (default: the zoo)")
    args = parser.parse_args()
    start = time.time()
    torch.manual_seed(0)
    rng = random.Random(0)
    lines, corrupted = corpus(rng, args.per_task)
    tokenizer = tokenizer_for(lines + corrupted)
    ids = [tokenizer(line, add_special_tokens=False)["input_ids"] for line in lines]
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_layer=4, n_head=4, n_embd=128,
                                     bos_token_id=1, eos_token_id=1, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.05)
    for step in range(args.steps):
        rows = [[1] + ids[rng.randrange(len(ids))] for _ in range(56)]
        rows += [random_repeat(rng, len(tokenizer)) for _ in range(8)]
        width = max(len(r) for r in rows)
        x = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = (x != 0).long()
        labels = x.masked_fill(mask == 0, -100)
        loss = model(input_ids=x, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0:
            print(f"step {step}: loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    cm = cf.from_hf(model, tokenizer=tokenizer, name="toy-lm")
    acc = {name: task_accuracy(cm, load_task(name, n=150, split="test")) for name in TASKS + ["induction"]}
    meta = {"accuracy_test_split": acc, "steps": args.steps, "seconds": round(time.time() - start, 1),
            "script": "scripts/train_toy_lm.py"}
    (args.out / "training.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
