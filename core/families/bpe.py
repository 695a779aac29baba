"""Byte-level BPE vocabularies built from a word list, for the tiny models' tokenizers (no torch, no download).

Byte-level BPE (GPT-2, CLIP, Qwen2, Mistral's Tekken) maps the bytes 0..255 to 256 printable
characters, so every text tokenizes; a merge list then joins those characters into the words
the tests and the demo captions use, so each is one token. The CLIP tokenizer marks a word's
end (``</w>``), GPT-2-style tokenizers mark a leading space (``Ġ``); :func:`vocabulary` builds
either from the same word list.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

#: GPT-2-style byte-level BPE's character for a space before a word (the byte 0x20 in :func:`byte_symbols`).
SPACE = "Ġ"


def byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    table = dict(zip(printable, codes))
    return [chr(table[b]) for b in range(256)]


def vocabulary(words: Iterable[str], pieces: Callable[[str], list[list[str]]], base: list[str], replay: bool = False) -> tuple[list[str], list[str]]:
    """``(tokens, merges)``: the ``base`` symbols, then the merges that join each of ``pieces(word)``
    (a word's symbol sequences, e.g. with and without a leading space) into one token, left to right.

    With ``replay`` the merges made so far are applied first, in their order, as the tokenizer will
    apply them, so every word really becomes one token (without it, CLIP's tiny vocabulary, a word
    sharing letters with an earlier one may stay split).
    """
    tokens = list(base)
    known = set(tokens)
    merges: list[str] = []
    for word in dict.fromkeys(words):
        for parts in pieces(word):
            parts = _apply(parts, merges) if replay else parts
            current = parts[0]
            for nxt in parts[1:]:
                merged = current + nxt
                if merged not in known:
                    merges.append(f"{current} {nxt}")
                    tokens.append(merged)
                    known.add(merged)
                current = merged
    return tokens, merges


def _apply(parts: list[str], merges: list[str]) -> list[str]:
    """``parts`` after byte-level BPE's merging: repeatedly the adjacent pair of the lowest rank."""
    rank = {tuple(m.split(" ")): n for n, m in enumerate(merges)}
    parts = list(parts)
    while len(parts) > 1:
        pairs = [(rank.get((a, b), len(rank)), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        best, i = min(pairs)
        if best == len(rank):
            return parts
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def gpt2_pieces(word: str) -> list[list[str]]:
    """A word's symbols at the start of a text and after a space (``Ġword``), as GPT-2-style pre-tokenizers split it."""
    return [list(word), [SPACE, *word]]
