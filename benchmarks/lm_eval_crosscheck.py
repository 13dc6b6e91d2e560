"""MMLU by our reference protocol against lm-evaluation-harness, on the same items and model.

Both read a seeded --limit subset of MMLU's test items (the subset `influence evaluate --target
mmlu --limit N --seed S` scores) with open-instruct's 5-shot prompt: ours through
`influence.evaluation.evaluate`, lm-eval through its HF model and local task configurations
that write the same prompt (`influence.evaluation.harness`). The script prints both
accuracies, how many items got the same letter, how many prompts were the same text, and the
largest difference between the two log-likelihoods of any option.

    pip install 'influence[harness]'                          # lm-eval==0.4.13
    python benchmarks/lm_eval_crosscheck.py --limit 20        # the bundled model (SmolLM2-135M-Instruct)
    python benchmarks/lm_eval_crosscheck.py --model DIR --limit 40 --seed 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a model id or directory [default: the bundled model]")
    parser.add_argument("--limit", type=int, default=20, help="MMLU items (a seeded subset)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    args = parser.parse_args()

    # heavy: imported after parsing, so --help is quick
    import torch

    from influence.evaluation import EvalSettings, build_task, evaluate
    from influence.evaluation.encoding import item_prompt_text
    from influence.evaluation.harness import harness_mmlu_choices, mmlu_rows, require_harness
    from influence.models import load_model

    require_harness()
    loaded = load_model(args.model)
    config = EvalSettings(mmlu_shots=args.shots, max_length=args.max_length, batch_size=args.batch_size,
                          progress=False)
    started = time.perf_counter()
    ours = evaluate(loaded, "mmlu", limit=args.limit, seed=args.seed, config=config)
    ours_seconds = time.perf_counter() - started
    task = build_task("mmlu", mmlu_shots=args.shots)
    items = task.fitted(task.subset(args.limit, args.seed), loaded.tokenizer, args.max_length)
    with tempfile.TemporaryDirectory() as directory:
        started = time.perf_counter()
        theirs = harness_mmlu_choices(loaded.model, loaded.tokenizer, mmlu_rows(args.limit, args.seed),
                                      Path(directory), shots=args.shots, batch_size=args.batch_size,
                                      max_length=args.max_length)
        theirs_seconds = time.perf_counter() - started
    loglik = [p["option_loglik"] for p in ours["predictions"]]

    letters = [p["prediction"] for p in ours["predictions"]]
    references = [p["reference"] for p in ours["predictions"]]
    same_prompt = sum(item_prompt_text(i, loaded.tokenizer, loss=True) == c.context for i, c in zip(items, theirs))
    gap = (torch.tensor(loglik) - torch.tensor([c.loglik for c in theirs])).abs().max().item()
    harness_accuracy = sum(c.letter == r for c, r in zip(theirs, references)) / len(references)
    print(f"model {loaded.spec}; MMLU {len(items)} items (seed {args.seed}), {args.shots}-shot, "
          f"max length {args.max_length}, torch {torch.__version__}")
    print(f"{'':<22}{'accuracy':>10}{'seconds':>10}")
    print(f"{'influence evaluate':<22}{ours['metrics']['accuracy']:>10.4f}{ours_seconds:>10.1f}")
    print(f"{'lm-eval 0.4.13 HFLM':<22}{harness_accuracy:>10.4f}{theirs_seconds:>10.1f}")
    print(f"same letter: {sum(a == c.letter for a, c in zip(letters, theirs))}/{len(items)}; "
          f"same prompt text: {same_prompt}/{len(items)}; largest option log-likelihood difference: {gap:.2e}")
    for index, (item, letter, choice) in enumerate(zip(items, letters, theirs)):
        if letter != choice.letter:
            print(f"  item {index} ({item.subtask}): ours {letter}, lm-eval {choice.letter}, "
                  f"reference {item.reference}")


if __name__ == "__main__":
    main()
