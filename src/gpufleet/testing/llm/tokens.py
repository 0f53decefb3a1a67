"""The simulated tokenizer, chat template, prefix block hashes and generated words.

A token is a run of non-space characters and the whitespace after it
(``re.findall(r"\\S+\\s*", text)``): cheap, deterministic, and joining a text's tokens gives
the text back (less leading whitespace). A chat is rendered to one prompt text, message by
message in order, as ``"<|role|>\\ncontent\\n"``, then ``"<|assistant|>\\n"``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

_TOKEN = re.compile(r"\S+\s*")

#: What the engine "generates": word i of a sequence is a pure function of its prompt.
_WORD_TEXT = (
    "the of and to in is was for on that with as by at from his her an were are which "
    "this be or had not but one all their has have they been when more there some can "
    "into time other these two may first then do any like my now over such our man me "
    "even most made after also did many before must through back years where much your"
)
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split(" "))


def tokenize(text: str) -> list[str]:
    """The text's tokens: each run of non-space characters with its trailing whitespace."""
    return _TOKEN.findall(text)


def render_chat(messages: Iterable[tuple[str, str]]) -> str:
    """One prompt text for ``(role, content)`` messages, in order, ready for the reply."""
    return "".join(f"<|{role}|>\n{content}\n" for role, content in messages) + "<|assistant|>\n"


def block_hashes(tokens: Sequence[str], block_tokens: int) -> list[int]:
    """Chained hashes of the full blocks of ``tokens``: block i's covers blocks 0..i.

    A partial last block has no hash (like vLLM, only full blocks are cached), so two
    prompts share block i's hash exactly when their first ``(i + 1) * block_tokens`` tokens
    are equal.
    """
    out: list[int] = []
    parent = b""
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        h = hashlib.blake2b(parent, digest_size=8)
        # The separator keeps ["ab", "c"] and ["a", "bc"] apart.
        h.update("\x00".join(tokens[start : start + block_tokens]).encode())
        parent = h.digest()
        out.append(int.from_bytes(parent, "big"))
    return out


def prompt_seed(text: str, seed: int) -> int:
    """A number that picks a prompt's generated words (same text and seed: same words)."""
    h = hashlib.blake2b(text.encode(), digest_size=8, salt=seed.to_bytes(8, "big", signed=True))
    return int.from_bytes(h.digest(), "big")


def output_token(seed: int, index: int) -> str:
    """The ``index``-th generated token of a sequence whose words are picked by ``seed``."""
    return WORDS[(seed + index * 2654435761) % len(WORDS)] + " "
