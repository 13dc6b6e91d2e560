"""The target pass of the unprojected score: long few-shot target examples batched as the pool's are give
the queries that one example at a time gives, and the pass shows a progress bar as the pool pass does."""

from __future__ import annotations

import re

import torch

from influence.data import Example
from influence.data.targets import Target
from influence.features import subtask_queries
from influence.less import LessSettings, less_run
from tests.test_grads import lora_model  # noqa: F401 (fixture)
from tests.test_less import _loaded, _pool

# shaped like LESS's bbh targets: a long few-shot prompt, an answer prefix read but not scored, no end of turn
SHOTS = "Q: Is the sky blue? A: Let's think step by step. The sky is blue. So the answer is yes.\n\n"
TARGET_EXAMPLES = [Example(SHOTS * shots + f"Q: Is {word} a colour?", "", f" Let's think. So the answer is {answer}.",
                           subtask=subtask, response_prefix="A:", closes_turn=False)
                   for shots, word, answer, subtask in [(3, "red", "yes", "colours"), (1, "stone", "no", "colours"),
                                                        (2, "blue", "yes", "colours"), (4, "river", "no", "things"),
                                                        (2, "cloud", "no", "things")]]
SUBTASKS = {"colours": [0, 1, 2], "things": [3, 4]}


def test_batched_target_queries_equal_those_of_one_example_at_a_time(lora_model):  # noqa: F811
    model, tokenizer = lora_model
    done = []
    batched = subtask_queries(model, tokenizer, TARGET_EXAMPLES, SUBTASKS, batch_size=8, max_batch_tokens=None,
                              progress=done.append)
    capped = subtask_queries(model, tokenizer, TARGET_EXAMPLES, SUBTASKS, batch_size=8, max_batch_tokens=300)
    alone = subtask_queries(model, tokenizer, TARGET_EXAMPLES, SUBTASKS, batch_size=1)
    assert done == [len(TARGET_EXAMPLES)]  # one batch of all five, reported as it finished
    assert alone.abs().sum() > 0
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(capped, alone, rtol=1e-4, atol=1e-6)


def test_the_target_pass_shows_a_progress_bar(tmp_path, capsys):
    target = Target("sums", [Example("What is 5 plus 7?", "", "5 plus 7 is 12.", subtask="sums"),
                             Example("What is 8 plus 9?", "", "8 plus 9 is 17.", subtask="sums")])
    settings = LessSettings.for_tests(index_root=tmp_path / "indexes", progress=True)
    less_run(_pool(), target, settings, k=2, loaded=_loaded())
    err = capsys.readouterr().err
    assert re.search(r"features epoch \d+ target \(sgd\) queries: 100%\S* 2/2 ", err), err
