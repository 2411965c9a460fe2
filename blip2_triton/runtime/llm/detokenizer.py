"""Generated tokens -> pieces of text as they come, joined equal to the final text.

The final text is what transformers gives: the new tokens decoded with special tokens skipped,
then stripped. A piece is emitted only when it is settled: never a trailing U+FFFD (a character
whose bytes are not all generated yet), never whitespace that might turn out to be trailing
(held back until more text follows), never leading whitespace. What decoding later rewrites
(rare: a tokenizer's clean-up of spaces) is held back too; the final piece carries the rest.
"""

from __future__ import annotations


class Detokenizer:
    """Incremental decoding of one request's new tokens."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.emitted = ""

    def _text(self) -> str:
        return self.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def add(self, token: int, *, pieces: bool = True) -> str:
        """Take one new token; returns the newly settled piece ("" when none, or when the caller
        wants no pieces: then nothing is decoded until ``finish``)."""
        self.tokens.append(token)
        if not pieces:
            return ""
        text = self._text().lstrip()
        settled = text.rstrip()
        while settled.endswith("\ufffd"):
            settled = settled[:-1].rstrip()
        if len(settled) <= len(self.emitted) or not settled.startswith(self.emitted):
            return ""
        piece = settled[len(self.emitted) :]
        self.emitted = settled
        return piece

    def finish(self) -> tuple[str, str]:
        """(the final text, the last piece so that all pieces join to it)."""
        final = self._text().strip()
        if final.startswith(self.emitted):
            return final, final[len(self.emitted) :]
        return final, ""  # decoding rewrote emitted text: the pieces cannot be taken back
