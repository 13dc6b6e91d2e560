"""Our MMLU letter choices against lm-evaluation-harness's on the same items, prompts and tiny model.

lm-eval builds the prompt with its own few-shot machinery from local task configurations
(`influence.evaluation.harness`) and scores with its own tokenisation and log-likelihoods;
the reference protocol must agree with it item by item.
"""

from __future__ import annotations

import pytest
import torch

from influence.evaluation import EvalSettings, build_task, evaluate
from influence.evaluation.encoding import item_prompt_text
from influence.evaluation.harness import harness_mmlu_choices, mmlu_rows
from influence.models import load_model
from influence.testing import tiny_llama, tiny_tokenizer

pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'influence[harness]' to run this check")

ITEMS, SEED, SHOTS = 10, 0, 1


def test_our_mmlu_letters_equal_lm_evals_on_a_tiny_model(tmp_path):
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([" A", " B", " C", " D"])     # one token per answer letter, as byte-level BPE has
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():                               # sharper outputs: the choices vary with the question
        for param in model.parameters():
            param.mul_(8.0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"))
    config = EvalSettings(mmlu_shots=SHOTS, max_length=8192, progress=False)

    ours = evaluate(loaded, "mmlu", limit=ITEMS, seed=SEED, config=config)
    theirs = harness_mmlu_choices(loaded.model, loaded.tokenizer, mmlu_rows(ITEMS, SEED), tmp_path / "tasks",
                                  shots=SHOTS, max_length=8192)

    items = build_task("mmlu", mmlu_shots=SHOTS).subset(ITEMS, SEED)
    assert [item_prompt_text(i, loaded.tokenizer, loss=True) for i in items] == [c.context for c in theirs]
    letters = [p["prediction"] for p in ours["predictions"]]
    assert letters == [c.letter for c in theirs] and len(set(letters)) > 1
    loglik = [p["option_loglik"] for p in ours["predictions"]]
    torch.testing.assert_close(torch.tensor(loglik), torch.tensor([c.loglik for c in theirs]), rtol=1e-4, atol=1e-4)
