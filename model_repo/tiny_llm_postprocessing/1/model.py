"""Triton python backend: token ids -> text, the `postprocessing` model of the TensorRT-LLM
ensemble (same tensor names as tensorrtllm_backend's inflight_batcher_llm/postprocessing).

Inputs:  TOKENS_BATCH INT32[-1,-1] (beams x tokens), SEQUENCE_LENGTH INT32[-1] (per beam),
         optional STREAM_OFFSET INT32[1] (from the CPU engine: -1 for a whole answer, else how
         many of the tokens earlier responses of the stream carried), optional CANCEL_KEY
         STRING[1] (from the CPU engine: sent back to it when this request is cancelled, i.e.
         the ensemble's client went away; in a stream whose client takes multi-token
         responses, each handled response is acknowledged to it, see back_channel.py).
Outputs: OUTPUT STRING[-1] (one text per beam, flat over the batch).
Parameters: tokenizer_dir, skip_special_tokens.

Streaming: decoding each token on its own loses SentencePiece's leading spaces (its decoder drops
the space of a text's first piece) and garbles a character whose UTF-8 bytes span tokens. The CPU
engine's streamed responses carry every token generated so far, and the piece sent is the new
stable text (detokenize.py): the decode of the tokens minus that of the ones sent before, with an
unfinished character held back until a later token completes it. The pieces then join to exactly
the one-shot decode (up to a character the generation cut mid-way). Without STREAM_OFFSET (the
tensorrtllm backend sends only the new tokens) each piece is decoded alone.
Token tensors that do not fit (shapes that do not pair a length with each row of tokens, negative
lengths, ids outside the vocabulary) answer 400 / INVALID_ARGUMENT for that request.
"""
import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import back_channel  # noqa: E402  (ships next to this file, from the CPU engine)
from detokenize import new_text  # noqa: E402  (ships next to this file)


class TritonPythonModel:
    def initialize(self, args):
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(version_dir, params["tokenizer_dir"], "tokenizer.json")
        self.tokenizer = Tokenizer.from_file(path)
        self.skip_special_tokens = params.get("skip_special_tokens", "true").lower() == "true"
        self.vocabulary = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.streams = {}  # cancel key -> _Stream

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        # One pass over the request's tensors (pb_utils.get_input_tensor_by_name walks them once per name).
        tensors = {tensor.name(): tensor for tensor in request.inputs()}
        key = tensors.get("CANCEL_KEY")
        key = key.as_numpy().reshape(-1)[0] if key is not None else b""
        key = key.decode() if isinstance(key, bytes) else str(key)
        # is_cancelled() is a round trip to the server: asked only in a stream of the CPU engine,
        # and at most once per back_channel.CHECK_INTERVAL_S of each stream.
        stream = self._stream(key, request) if key else None
        if stream is not None and self._time_to_ask(stream) and request.is_cancelled():
            # The ensemble's client went away after the engine sent this response: stop the engine,
            # and answer an empty text (no one reads it). Not an error: a step's error in a streaming
            # ensemble with other steps in flight leaves tritonserver 2.51 counting the ensemble's
            # request in flight for good (the CPU engine's _finish says why), so a stop waited its
            # whole exit timeout ("Model 'tiny_llm' has 1 in-flight inferences") and failed
            # (tests/test_openai.py, the pooled streams test).
            back_channel.request_cancel(key)
            return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", np.array([b""], dtype=np.object_))])
        tokens = tensors["TOKENS_BATCH"].as_numpy()
        lengths = tensors["SEQUENCE_LENGTH"].as_numpy()
        offset = tensors.get("STREAM_OFFSET")
        offset = -1 if offset is None else int(offset.as_numpy().reshape(-1)[0])
        # One row of tokens per length (batch x beams). This runs once per streamed token, so the
        # checks are on Python lists: a numpy reduction over a few ids costs more (~20 µs each,
        # its code cold between tokens).
        if tokens.ndim != lengths.ndim + 1 or tokens.shape[:-1] != lengths.shape:
            return _client_error(f"inputs TOKENS_BATCH {list(tokens.shape)} and SEQUENCE_LENGTH "
                                 f"{list(lengths.shape)} do not match")
        counts = lengths.reshape(-1).tolist()
        texts = []
        for row, count in zip(tokens.reshape(len(counts), tokens.shape[-1]), counts):
            if count < 0:
                return _client_error("input SEQUENCE_LENGTH is negative")
            ids = row[:count].tolist()  # a length beyond its row takes the row, as upstream's slice does
            if ids and (min(ids) < 0 or max(ids) >= self.vocabulary):
                return _client_error(f"input TOKENS_BATCH holds ids outside 0..{self.vocabulary - 1}")
            if offset < 0:
                text = self._decode(ids)
            elif stream is not None and len(counts) == 1:
                # The stream's previous response ended where this one's new tokens start: its
                # stable text is this one's starting point (one decode a token, not two).
                before = stream.stable_text if stream.sent == offset else None
                text, stream.stable_text = new_text(self._decode, ids, offset, before)
                stream.sent = len(ids)
            else:
                text = new_text(self._decode, ids, offset)[0]
            texts.append(text.encode("utf-8"))
        if stream is not None and offset >= 0 and stream.paced:  # handled: the engine may send this stream's next response
            back_channel.acknowledge(key, counts[0])
        # Flat [batch * beams], as upstream's postprocessing answers (clients index text_output[0]).
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", np.array(texts, dtype=object))])

    def _stream(self, key, request):
        """The state of a CPU engine stream, made at its first response (the request parameters
        are parsed once a stream, not once a token)."""
        stream = self.streams.get(key)
        if stream is None:
            now = time.monotonic()
            if len(self.streams) > 4096:  # forget the streams that ended
                self.streams = {k: s for k, s in self.streams.items() if s.next_check > now}
            stream = self.streams[key] = _Stream(_paced(request), now)
        return stream

    @staticmethod
    def _time_to_ask(stream):
        now = time.monotonic()
        if now < stream.next_check:
            return False
        stream.next_check = now + back_channel.CHECK_INTERVAL_S
        return True

    def _decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)


class _Stream:
    """What the postprocessing keeps of a CPU engine stream between its responses."""

    __slots__ = ("paced", "next_check", "sent", "stable_text")

    def __init__(self, paced, now):
        self.paced = paced  # the engine paces it (its client takes multi-token responses)
        # When to ask is_cancelled() next. Not at the first response: that one carries the time to
        # first token, and a client gone already is caught at the next.
        self.next_check = now + back_channel.CHECK_INTERVAL_S
        self.sent, self.stable_text = -1, None  # tokens of its last response, and their stable text


def _paced(request):
    """Whether the engine paces this stream: its client takes multi-token responses."""
    try:
        return back_channel.multi_token(request.parameters())
    except ValueError:  # the engine refused the request already
        return False


def _client_error(message):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(f"postprocessing: {message}",
                                                                 pb_utils.TritonError.INVALID_ARG))
