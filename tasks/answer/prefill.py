"""The prompt's forward pass (time to first token) for Llama-family generators, leaner than transformers'.

Time to first token is one forward pass over the whole prompt. transformers' forward of a small Llama
on a CPU spends a sizeable share of its time outside the matrix products (docs/retrieval.md, "Time to
first token"): rotary embedding through ``cat``/``neg``, RMSNorm as five small ops, residual adds, and
q/k/v and gate/up as five separate GEMMs. This path computes the same function with fewer passes over memory:

- one GEMM for q, k and v, one for gate and up; the residual stream is updated in place inside the
  output projections' GEMMs (``addmm_``); RMSNorm is three passes (``F.rms_norm`` composes seven ops);
  rotary is two ``addcmul_`` on the halves; the normed rows and the gate/up product (12 MB at 1,000
  tokens) live in buffers every layer reuses instead of fresh, page-faulting allocations;
- the last layer computes keys and values for every position (the cache needs them) and the rest
  (query, attention, MLP) for the last position only: its logits are all that generation needs;
- the shared prefix, the system turn that every question's prompt starts with, is computed once per
  model and its q/k/v rows reused; its key is the exact token ids, so any other prefix is recomputed;
  attention is PyTorch's (``scaled_dot_product_attention``), keeping the new positions' outputs.

Results agree with transformers' forward up to float rounding (tests/answer/test_prefill.py compares logits,
caches and greedy answers). It returns the next-token logits and a ``DynamicCache`` holding the whole
prompt, from which ``generate()`` continues decoding. ``FastPrefill.for_model`` returns None for any
model it does not reproduce exactly (another architecture, biases, a GPU) and on any transformers release
outside ``TESTED_TRANSFORMERS`` (logged once): those keep transformers' path. ``answer.fast_prefill=false``
(``RAGTUNE_ANSWER__FAST_PREFILL``) keeps it for every model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tasks.runtime.versions import release_tested

log = logging.getLogger(__name__)
# transformers releases (major.minor) this pass was written against and tests/answer/test_prefill.py passed
# on: it mirrors their LlamaForCausalLM (weights, rotary embedding, RMSNorm) and generate(cache=...)
TESTED_TRANSFORMERS = ("5.24", "5.25")
_refused: list[str] = []


@dataclass(frozen=True)
class _Layer:
    qkv: torch.Tensor  # [q; k; v] projection rows, (q + 2 kv) x hidden
    o_t: torch.Tensor  # o_proj.weight transposed (a view): x + attn @ o_t is one addmm
    gate_up: torch.Tensor  # [gate; up] rows, 2 intermediate x hidden
    down_t: torch.Tensor
    norm_attn: torch.Tensor
    norm_mlp: torch.Tensor


class FastPrefill:
    """The prompt pass of one model (build with ``for_model``); holds the fused weights and the shared prefix's rows.

    Not thread-safe: callers serialise it (``Generator.lock``), as they serialise ``generate()``.
    """

    def __init__(self, model: Any):
        cfg = model.config
        self.model = model
        self.cfg = cfg
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.layers = [_fuse(layer) for layer in model.model.layers]
        self._prefix_ids: tuple[int, ...] = ()
        self._prefix_rows: list[torch.Tensor] = []  # per layer: the prefix's q/k/v rows after rotary

    @classmethod
    def for_model(cls, model: Any) -> FastPrefill | None:
        """A prefill for ``model`` when it is a plain Llama causal LM on the CPU and transformers a tested
        release, else None (transformers' own pass)."""
        if not transformers_tested():
            return None
        cfg = model.config
        plain_llama = (type(model).__name__ == "LlamaForCausalLM" and cfg.hidden_act == "silu"
                       and not cfg.attention_bias and not cfg.mlp_bias and getattr(cfg, "pretraining_tp", 1) == 1)
        on_cpu = all(p.device.type == "cpu" for p in model.parameters())
        return cls(model) if plain_llama and on_cpu else None

    def __call__(self, ids: list[int], shared: int = 0) -> tuple[torch.Tensor, Any]:
        """Next-token logits (1 x vocab) after ``ids`` and the cache of all of them; ``ids[:shared]`` may be reused."""
        from transformers import DynamicCache

        if not ids:
            raise ValueError("an empty prompt has no next token")
        start, rows = self._prefix(tuple(ids[: min(shared, len(ids) - 1)]))
        cache = DynamicCache(config=self.cfg)
        x = self._run(ids, start, rows, cache=cache)
        return self.model.lm_head(self.model.model.norm(x[-1:])), cache

    def remember(self, prefix: tuple[int, ...]) -> None:
        """Compute and keep the rows of ``prefix`` now (at load), so the first prompt starting with it reuses them."""
        with torch.inference_mode():
            self._prefix(prefix)

    def _prefix(self, prefix: tuple[int, ...]) -> tuple[int, list[torch.Tensor]]:
        if not prefix:
            return 0, []
        if prefix != self._prefix_ids:
            rows: list[torch.Tensor] = []
            self._run(list(prefix), 0, [], keep=rows)
            self._prefix_ids, self._prefix_rows = prefix, rows
        return len(prefix), self._prefix_rows

    def _run(self, ids: list[int], start: int, rows: list[torch.Tensor], cache: Any = None,
             keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Hidden states of ``ids[start:]`` (only the last when filling ``cache``); ``rows`` hold ``ids[:start]``."""
        n = len(ids)
        x = self.model.model.embed_tokens(torch.tensor(ids[start:]))  # the residual stream, updated in place
        cos, sin = self.model.model.rotary_emb(x[None], torch.arange(start, n)[None])
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]
        work = _Workspace(x.shape[0], x.shape[1], self.layers[0].gate_up.shape[0])
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.norm_attn, self.eps, out=work.normed[: x.shape[0]])
            trim = cache is not None and i == last
            qkv, last_query = self._qkv(layer, h, rows[i] if rows else None, cos, sin, start, trim)
            if keep is not None:
                keep.append(qkv)
            q, k, v = self._split(qkv)
            if cache is not None:
                cache.update(k.transpose(0, 1)[None], v.transpose(0, 1)[None], i)
            if last_query is not None:  # the last position only: it sees every key
                x = x[-1:]
                attn = F.scaled_dot_product_attention(
                    last_query.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                    enable_gqa=True)[0].transpose(0, 1)
            else:  # the new positions' queries; the prefix's own attention is never needed again
                attn = causal_attention(q[start:], k, v)
            attn = attn.reshape(-1, self.heads * self.dim)
            x.addmm_(attn, layer.o_t)
            self._mlp(layer, x, work)
        return x

    def _qkv(self, layer: _Layer, h: torch.Tensor, prefix_rows: torch.Tensor | None, cos: torch.Tensor,
             sin: torch.Tensor, start: int, trim: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q/k/v rows for every position (prefix rows copied, new rows projected and rotated).

        With ``trim`` the rows' queries stay unset and the last position's query comes back on its own.
        """
        n, width = start + h.shape[0], layer.qkv.shape[0]
        qkv = torch.empty(n, width, dtype=h.dtype)
        if prefix_rows is not None:
            qkv[:start] = prefix_rows
        q_width = self.heads * self.dim
        new = qkv[start:]
        kv_width = self.kv_heads * self.dim
        last_query = None
        if trim:
            torch.mm(h, layer.qkv[q_width:].t(), out=new[:, q_width:])
            last_query = torch.mm(h[-1:], layer.qkv[:q_width].t()).view(1, self.heads, self.dim)
            _rotate_(last_query, cos[-1:], sin[-1:])
            _rotate_(new[:, q_width : q_width + kv_width].view(-1, self.kv_heads, self.dim), cos, sin)
        else:  # queries and keys are adjacent columns: one rotation for both
            torch.mm(h, layer.qkv.t(), out=new)
            _rotate_(new[:, : q_width + kv_width].view(-1, self.heads + self.kv_heads, self.dim), cos, sin)
        return qkv, last_query

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, d = qkv.shape[0], self.dim
        q_width, kv_width = self.heads * d, self.kv_heads * d
        return (qkv[:, :q_width].view(n, self.heads, d),
                qkv[:, q_width : q_width + kv_width].view(n, self.kv_heads, d),
                qkv[:, q_width + kv_width :].view(n, self.kv_heads, d))

    def _mlp(self, layer: _Layer, x: torch.Tensor, work: _Workspace) -> None:
        """x += down(silu(gate(h)) * up(h)) for h = RMSNorm(x), in place, through the workspace's buffers."""
        rows = x.shape[0]
        h = _rms_norm(x, layer.norm_mlp, self.eps, out=work.normed[:rows])
        gate_up = torch.mm(h, layer.gate_up.t(), out=work.gate_up[:rows])
        half = gate_up.shape[1] // 2
        act = F.silu(gate_up[:, :half], inplace=True).mul_(gate_up[:, half:])
        x.addmm_(act, layer.down_t)


def transformers_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed transformers) is a release in ``TESTED_TRANSFORMERS``.

    Any other release keeps transformers' own prompt pass: this one restates its Llama forward, which a
    release may change. Logged once per version.
    """
    if version is None:
        import transformers

        version = transformers.__version__
    return release_tested("transformers", version, TESTED_TRANSFORMERS, _refused, "ragtune's prompt pass is off",
                          "transformers' own runs", log)


class _Workspace:
    """Buffers every layer reuses: the normed rows and the gate/up product (12 MB at 1,000 tokens).

    Fresh tensors of that size per layer came back from the allocator as new pages: thousands of page
    faults per prompt. The q/k/v rows are not here: the cache keeps each layer's.
    """

    def __init__(self, rows: int, hidden: int, gate_up: int):
        self.normed = torch.empty(rows, hidden)
        self.gate_up = torch.empty(rows, gate_up)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor) -> torch.Tensor:
    """transformers' LlamaRMSNorm, x * rsqrt(mean(x^2) + eps) * weight, in three passes over x."""
    scale = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    scale.square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return torch.mul(x, scale, out=out).mul_(weight)


def _fuse(layer: Any) -> _Layer:
    """The layer's weights for this path; its own q/k/v and gate/up weights become views of the fused ones."""
    attn, mlp = layer.self_attn, layer.mlp
    return _Layer(
        qkv=_share([attn.q_proj, attn.k_proj, attn.v_proj]),
        o_t=attn.o_proj.weight.detach().t(),
        gate_up=_share([mlp.gate_proj, mlp.up_proj]),
        down_t=mlp.down_proj.weight.detach().t(),
        norm_attn=layer.input_layernorm.weight.detach(),
        norm_mlp=layer.post_attention_layernorm.weight.detach(),
    )


def _share(linears: list[Any]) -> torch.Tensor:
    """The linears' weights stacked by rows, each linear then reading its rows of it: one copy in memory."""
    fused = torch.cat([lin.weight.detach() for lin in linears])
    row = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[row : row + rows]
        row += rows
    return fused


def _rotate_(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """Rotary embedding in place on ``t`` (positions x heads x dim): t*cos + rotate_half(t)*sin, as transformers."""
    half = t.shape[-1] // 2
    t1, t2 = t[..., :half], t[..., half:]
    first = t1.clone()
    t1.mul_(cos[..., :half]).addcmul_(t2, sin[..., :half], value=-1)
    t2.mul_(cos[..., half:]).addcmul_(first, sin[..., half:])


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v, causal, for queries at the last ``len(q)`` positions of ``k``/``v``.

    q: queries x heads x dim, k and v: keys x kv_heads x dim. PyTorch's SDPA aligns its causal mask
    top-left, so the cached positions' queries are padded with zeros and their rows dropped.
    """
    queries, keys = q.shape[0], k.shape[0]
    if queries != keys:
        q = torch.cat([q.new_zeros(keys - queries, *q.shape[1:]), q])
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], is_causal=True, enable_gqa=True)
    return out[0].transpose(0, 1)[keys - queries :]
