"""Incremental detokenization for streaming: the text one more token adds, from the running token
list, so the pieces of a stream join to exactly the one-shot decode, for byte-level BPE and
SentencePiece alike (whose decoder strips the space of a text's first piece, so tokens decoded
one by one lose their spaces), with a character whose UTF-8 bytes span tokens held back until it
is complete. Each step is recomputed from the tokens; a caller may hand back the stable text the
previous step returned, which saves one of its two decodes. Ships next to the postprocessing
model.py; imports nothing but the standard library.
"""
import os

REPLACEMENT = "\ufffd"  # what decoders produce for an unfinished UTF-8 byte sequence
# A UTF-8 character has at most 4 bytes: at most 3 tokens wait for the one that completes it.
MAX_PENDING = 3


def stable_text(decode, ids):
    """The decode of the longest prefix of ids that does not end inside a character.

    Cut at a token boundary, not by stripping U+FFFD from the text: a byte-fallback decoder turns
    a whole run of bytes into U+FFFDs while it is incomplete, characters before it included."""
    for end in range(len(ids), max(len(ids) - MAX_PENDING, 0) - 1, -1):
        text = decode(ids[:end])
        if not text.endswith(REPLACEMENT):
            return text
    return decode(ids)  # more than MAX_PENDING bad tokens: invalid bytes, sent as they decode


def new_text(decode, ids, sent, before=None):
    """(the stable text ids add to that of ids[:sent], the stable text of ids).

    decode: token ids -> text (the tokenizer's decode); before: stable_text(decode, ids[:sent])
    if the caller has it (the second value of the step that had those sent tokens)."""
    if before is None:
        before = stable_text(decode, ids[:sent])
    now = stable_text(decode, ids)
    # A decoder may rewrite earlier text (none of the families here does): send what differs.
    return now[len(os.path.commonprefix([before, now])):], now
