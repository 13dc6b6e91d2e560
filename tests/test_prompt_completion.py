"""`--format prompt-completion`: TRL's conversational prompt/completion records, which SFTTrainer
trains on as they are and which read back as the same examples."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from influence.cli import main
from influence.data import Example


def test_a_chat_becomes_its_turns_up_to_the_last_user_turn_then_the_response():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "5"}]
    record = Example.from_messages(chat, source="chats").to_record("prompt-completion")
    assert record["prompt"] == chat[:-1]
    assert record["completion"] == [{"role": "assistant", "content": "5"}]
    assert Example("Name a colour.", "", "Blue.").to_record("prompt-completion")["prompt"] == \
        [{"role": "user", "content": "Name a colour."}]


@pytest.fixture
def written(tmp_path, pool_file):
    out = tmp_path / "pc.jsonl"
    result = CliRunner().invoke(main, ["select", "--pool", str(pool_file), "--k", "3", "--format",
                                       "prompt-completion", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_a_prompt_completion_selection_reads_back_as_the_same_examples(written, pool_file):
    from influence.data.pools import load_pool

    chosen = {json.loads(line)["id"] for line in written.read_text().splitlines()}
    assert {e.id for e in load_pool([str(written)]).examples} == chosen
    assert chosen <= {e.id for e in load_pool([str(pool_file)]).examples}


def test_trls_data_preparation_takes_the_records_as_conversational_prompt_completion(written):
    pytest.importorskip("trl", reason="trl is not installed (pip install --no-deps trl)")
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    from influence.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    for line in written.read_text().splitlines():
        record = json.loads(line)
        assert is_conversational(record)
        rendered = maybe_apply_chat_template(record, tokenizer)
        assert rendered["prompt"] == f"<|user|>{record['prompt'][0]['content']}<|end|><|assistant|>"
        assert rendered["completion"] == f"{record['completion'][0]['content']}<|end|>"


@pytest.mark.slow  # minutes of CPU: trl's import and a trainer
def test_trls_sft_trainer_trains_on_the_records_as_they_are(written, tmp_path):
    trl = pytest.importorskip("trl", reason="trl is not installed (pip install --no-deps trl)")
    import torch
    from datasets import load_dataset

    from influence.testing import tiny_model_and_tokenizer

    model, tokenizer = tiny_model_and_tokenizer()
    dataset = load_dataset("json", data_files=str(written), split="train")
    config = trl.SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=3, per_device_train_batch_size=2,
                           learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no",
                           use_cpu=True, max_length=256, dataset_num_proc=None)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
    prepared = trainer.train_dataset[0]
    # TRL took the records as prompt/completion: the loss falls on the completion alone
    trained = [label for label in prepared["labels"] if label != -100]
    assert tokenizer.decode(trained).startswith(dataset[0]["completion"][0]["content"])
    assert len(trained) < len(prepared["input_ids"])
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
