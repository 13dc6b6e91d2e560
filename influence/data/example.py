"""The one example type every part of the toolkit passes around."""

from __future__ import annotations

from dataclasses import dataclass, field

from influence.constants import ID_LENGTH
from influence.io import sha256_json

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One instruction/response pair, or one chat whose last turn is the response.

    `response_prefix` opens the response turn as part of the prompt (e.g. "A:" before a
    few-shot answer): the model reads it, the loss falls only on `output` after it.
    `closes_turn=False` leaves the turn open: the response is scored without the template's
    end-of-turn marker or EOS after it (LESS's target examples score the answer alone).
    `id` is a hash of the conversation's content alone (not of its source or subtask),
    so the same example met in two pools has the same id and is caught as a duplicate.
    """

    instruction: str
    input: str
    output: str
    messages: tuple[tuple[str, str], ...] | None = None  # (role, content), as given in chat form
    subtask: str | None = None
    source: str = ""
    response_prefix: str = ""
    closes_turn: bool = True
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            # An ordinary example's id is the hash of the chat alone, as it always was.
            content: object = self.chat()
            if self.response_prefix or not self.closes_turn:
                content = {"chat": content, "response_prefix": self.response_prefix}
                if not self.closes_turn:
                    content["closes_turn"] = False
            object.__setattr__(self, "id", sha256_json(content)[:ID_LENGTH])

    @property
    def prompt(self) -> str:
        """The instruction with its input, as a user would read it."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    @property
    def response(self) -> str:
        return self.output

    @property
    def multi_turn(self) -> bool:
        """Whether the example has more than one user turn before the response (or a system turn): the
        alpaca view then flattens the turns into "User: ..." text in the instruction."""
        return self.messages is not None and not (len(self.messages) == 2 and self.messages[0][0] == "user")

    def chat(self) -> list[dict[str, str]]:
        """The example as chat messages, the response last (its prefix included)."""
        if self.messages is not None:
            chat = [{"role": role, "content": content} for role, content in self.messages]
        else:
            chat = [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": self.output}]
        if self.response_prefix:
            chat[-1] = {**chat[-1], "content": self.response_prefix + chat[-1]["content"]}
        return chat

    @classmethod
    def from_messages(cls, messages: list[dict[str, str]], *, subtask: str | None = None,
                      source: str = "", response_prefix: str = "") -> "Example":
        """Build from chat messages; the alpaca view flattens earlier turns into the instruction.

        With `response_prefix`, the last message's content starts with it (as `chat()` gives it).
        """
        pairs = tuple((m["role"], m["content"]) for m in messages)
        if response_prefix:
            if not pairs or not pairs[-1][1].startswith(response_prefix):
                raise ValueError(f"the last message does not start with its response prefix {response_prefix!r}")
            pairs = (*pairs[:-1], (pairs[-1][0], pairs[-1][1][len(response_prefix):]))
        *context, (_, output) = pairs
        if len(context) == 1 and context[0][0] == "user":
            instruction = context[0][1]
        else:
            instruction = "\n\n".join(f"{role.capitalize()}: {content}" for role, content in context)
        return cls(instruction=instruction, input="", output=output, messages=pairs,
                   subtask=subtask, source=source, response_prefix=response_prefix)

    def to_record(self, fmt: str) -> dict:
        """The SFT-ready record: alpaca (instruction/input/output), messages, or prompt-completion (the
        messages up to the last user turn, then the response as a one-message list)."""
        if fmt == "alpaca":
            record = {"instruction": self.instruction, "input": self.input, "output": self.output}
        elif fmt == "messages":
            record = {"messages": self.chat()}
        elif fmt == "prompt-completion":  # TRL's conversational prompt-completion: loss on the completion only
            chat = self.chat()
            record = {"prompt": chat[:-1], "completion": chat[-1:]}
        else:
            raise ValueError(f"unknown output format {fmt!r}")
        if self.response_prefix:
            record["response_prefix"] = self.response_prefix
        if self.subtask is not None:
            record["subtask"] = self.subtask
        record["source"] = self.source
        return record


def example_text(example: Example) -> str:
    """The whole example as one text, every turn, the response last: what lexical methods read."""
    return "\n".join(message["content"] for message in example.chat())
