"""Build task (c) of issue 13 item 5: a procedural task with exact answers, as prompt/completion
records (loss on the completion only; scored by exact match of the greedy completion).

Kinds (``--kinds``, mixed evenly in a seeded order):

* ``add``      ``{"prompt": "Q: 4821 + 937 = ?\\nA:", "completion": " 5758"}`` - two integers of
               ``--min-digits`` to ``--max-digits`` digits each (default 2-4);
* ``reverse``  ``{"prompt": "Q: reverse 'kqzta'\\nA:", "completion": " atzqk"}`` - a string of
               ``--min-letters`` to ``--max-letters`` lowercase letters (default 3-8).

Both are exactly computable, so exact match is a fair score, and both need a rule the demo
model's pretraining (English prose about Python) never taught it. Every record is a few dozen
tokens under the demo model's tokenizer (vocab 4096, context 256).

Deterministic: ``random.Random(seed)``. Train and eval never share a question: eval questions are
drawn first, and a train draw that repeats any eval (or earlier train) question is drawn again.

Writes OUT/train.jsonl, OUT/eval.jsonl and OUT/build.json (arguments, counts, sha256). Default OUT
is out/tune_tasks/procedural (git-ignored):

    python scripts/tune_tasks/build_procedural.py
    python scripts/tune_tasks/build_procedural.py --kinds add --train-rows 200 --eval-rows 50 --out /tmp/add
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import string
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("add", "reverse")


def make_add(rng: random.Random, min_digits: int, max_digits: int) -> dict:
    def number() -> int:
        d = rng.randint(min_digits, max_digits)
        return rng.randint(10 ** (d - 1) if d > 1 else 0, 10 ** d - 1)

    a, b = number(), number()
    return {"prompt": f"Q: {a} + {b} = ?\nA:", "completion": f" {a + b}"}


def make_reverse(rng: random.Random, min_letters: int, max_letters: int) -> dict:
    s = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_letters, max_letters)))
    return {"prompt": f"Q: reverse '{s}'\nA:", "completion": f" {s[::-1]}"}


def generate(n_train: int, n_eval: int, kinds=KINDS, seed: int = 0, min_digits: int = 2, max_digits: int = 4,
             min_letters: int = 3, max_letters: int = 8) -> tuple[list[dict], list[dict]]:
    """(train, eval) records; the kinds alternate in a seeded order; no prompt is in both."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown kind {k!r}: choose from {', '.join(KINDS)}")
    if not (1 <= min_digits <= max_digits) or not (1 <= min_letters <= max_letters):
        raise ValueError("need 1 <= min <= max for digits and letters")
    rng = random.Random(seed)
    makers = {"add": lambda: make_add(rng, min_digits, max_digits),
              "reverse": lambda: make_reverse(rng, min_letters, max_letters)}
    seen: set[str] = set()

    def draw(n: int) -> list[dict]:
        out, tries = [], 0
        while len(out) < n:
            kind = kinds[len(out) % len(kinds)]
            rec = makers[kind]()
            tries += 1
            if tries > 50 * n + 1000:
                raise ValueError(f"cannot draw {n} distinct questions: widen --max-digits / --max-letters")
            if rec["prompt"] in seen:
                continue
            seen.add(rec["prompt"])
            out.append(rec)
        rng.shuffle(out)
        return out

    ev = draw(n_eval)
    train = draw(n_train)
    return train, ev


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "out" / "tune_tasks" / "procedural"))
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--train-rows", type=int, default=6000)
    ap.add_argument("--eval-rows", type=int, default=400)
    ap.add_argument("--min-digits", type=int, default=2)
    ap.add_argument("--max-digits", type=int, default=4)
    ap.add_argument("--min-letters", type=int, default=3)
    ap.add_argument("--max-letters", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        train, ev = generate(args.train_rows, args.eval_rows, kinds, args.seed, args.min_digits, args.max_digits,
                             args.min_letters, args.max_letters)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, rows in (("train", train), ("eval", ev)):
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (out / f"{name}.jsonl").write_text(text, encoding="utf-8")
        digests[name] = hashlib.sha256(text.encode()).hexdigest()
    build = {"task": "procedural (prompt/completion, exact answers)", "kinds": list(kinds),
             "rows": {"train": len(train), "eval": len(ev)}, "args": vars(args), "sha256": digests}
    (out / "build.json").write_text(json.dumps(build, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(train)} train / {len(ev)} eval records ({', '.join(kinds)}) to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
