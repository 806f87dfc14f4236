"""The release's eval-mode forward, written out with plain tensor ops on its raw state dicts.

One item at a time and no padding (the release's result for an item alone), none of the
project's modules: a second, independent reading of the release's code
(``at_bert/lib/encoders.py``, ``at/lib/model.py``, ESA's ``lib/encoders.py``, BERT).
"""

from __future__ import annotations

import math
from typing import Any

import torch

State = dict[str, torch.Tensor]


def lin(x: torch.Tensor, sd: State, name: str) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def bn(x: torch.Tensor, sd: State, name: str, eps: float = 1e-5) -> torch.Tensor:
    """Eval BatchNorm over the last dimension's channels."""
    return ((x - sd[f"{name}.running_mean"]) / torch.sqrt(sd[f"{name}.running_var"] + eps)
            * sd[f"{name}.weight"] + sd[f"{name}.bias"])


def l2(x: torch.Tensor) -> torch.Tensor:
    return x / (torch.sqrt((x * x).sum(-1, keepdim=True)) + 1e-8)


def softmax0(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max(dim=0).values)
    return e / e.sum(dim=0)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def mlp_bn(x: torch.Tensor, sd: State, p: str) -> torch.Tensor:
    return lin(torch.relu(bn(lin(x, sd, f"{p}.layers.0"), sd, f"{p}.bns.0")), sd, f"{p}.layers.1")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """(n, dim) each -> (n, dim), ``heads`` heads, no mask (one item alone)."""
    n, dim = q.shape
    d = dim // heads
    out = []
    for h in range(heads):
        s = slice(h * d, (h + 1) * d)
        weights = softmax0((q[:, s] @ k[:, s].T / math.sqrt(d)).T).T  # softmax over keys
        out.append(weights @ v[:, s])
    return torch.cat(out, dim=1)


def transformer_layer(x: torch.Tensor, sd: State, p: str, heads: int) -> torch.Tensor:
    """Post-norm ``nn.TransformerEncoderLayer`` (ReLU), eval."""
    p = f"{p}.layers.0"
    dim = x.shape[1]
    w, b = sd[f"{p}.self_attn.in_proj_weight"], sd[f"{p}.self_attn.in_proj_bias"]
    q, k, v = (x @ w[i * dim:(i + 1) * dim].T + b[i * dim:(i + 1) * dim] for i in range(3))
    x = layer_norm(x + lin(attention(q, k, v, heads), sd, f"{p}.self_attn.out_proj"),
                   sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], 1e-5)
    ff = lin(torch.relu(lin(x, sd, f"{p}.linear1")), sd, f"{p}.linear2")
    return layer_norm(x + ff, sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], 1e-5)


def relation_pool(local: torch.Tensor, sd: State, heads: int, residual_weight: float) -> torch.Tensor:
    """``gpool`` (mean of the 2 largest values per dim) mixed with ``graph_pool`` (mean) of
    the transformer's outputs."""
    top = local.sort(dim=0, descending=True).values[:min(2, local.shape[0])].mean(dim=0)
    related = transformer_layer(local, sd, "aggr", heads).mean(dim=0)
    return l2(residual_weight * top + (1 - residual_weight) * related)


def _ln(sd: State, p: str) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm parameters under either naming (``weight/bias`` or ``gamma/beta``)."""
    return sd.get(f"{p}.weight", sd.get(f"{p}.gamma")), sd.get(f"{p}.bias", sd.get(f"{p}.beta"))


def bert(ids: list[int], sd: State, config: Any) -> torch.Tensor:
    """BERT's last hidden states (len, hidden) for one caption, no padding."""
    ids_t = torch.tensor(ids)
    x = (sd["bert.embeddings.word_embeddings.weight"][ids_t]
         + sd["bert.embeddings.position_embeddings.weight"][: len(ids)]
         + sd["bert.embeddings.token_type_embeddings.weight"][0])
    eps = config.layer_norm_eps
    x = layer_norm(x, *_ln(sd, "bert.embeddings.LayerNorm"), eps)
    for layer in range(config.num_hidden_layers):
        p = f"bert.encoder.layer.{layer}"
        q, k, v = (lin(x, sd, f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
        context = attention(q, k, v, config.num_attention_heads)
        x = layer_norm(lin(context, sd, f"{p}.attention.output.dense") + x,
                       *_ln(sd, f"{p}.attention.output.LayerNorm"), eps)
        inner = lin(x, sd, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + torch.erf(inner / math.sqrt(2)))  # exact GELU
        x = layer_norm(lin(inner, sd, f"{p}.output.dense") + x, *_ln(sd, f"{p}.output.LayerNorm"), eps)
    return x


def gru_directions(x: torch.Tensor, sd: State, p: str, layers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A bidirectional GRU over one sequence (len, in): the last layer's (forward, backward)."""
    def run(seq: torch.Tensor, suffix: str) -> torch.Tensor:
        w_ih, w_hh = sd[f"{p}.weight_ih_{suffix}"], sd[f"{p}.weight_hh_{suffix}"]
        b_ih, b_hh = sd[f"{p}.bias_ih_{suffix}"], sd[f"{p}.bias_hh_{suffix}"]
        hidden = w_hh.shape[1]
        h = torch.zeros(hidden)
        out = []
        for token in seq:
            gi, gh = w_ih @ token + b_ih, w_hh @ h + b_hh
            r = torch.sigmoid(gi[:hidden] + gh[:hidden])
            z = torch.sigmoid(gi[hidden:2 * hidden] + gh[hidden:2 * hidden])
            n = torch.tanh(gi[2 * hidden:] + r * gh[2 * hidden:])
            h = (1 - z) * n + z * h
            out.append(h)
        return torch.stack(out)

    for layer in range(layers):
        forward = run(x, f"l{layer}")
        backward = run(x.flip(0), f"l{layer}_reverse").flip(0)
        x = torch.cat([forward, backward], dim=1)
    return forward, backward


# --- MEET (at_bert: BERT variant) ---------------------------------------------------------------

def meet_bert_image(regions: torch.Tensor, img_enc: State, heads: int, rw: float) -> torch.Tensor:
    local = lin(regions, img_enc, "fc.fc") + mlp_bn(regions, img_enc, "fc.mlp")
    return relation_pool(local, img_enc, heads, rw)


def meet_bert_text(ids: list[int], txt_enc: State, config: Any, heads: int, rw: float) -> torch.Tensor:
    return relation_pool(lin(bert(ids, txt_enc, config), txt_enc, "linear"), txt_enc, heads, rw)


# --- MEET (at: BiGRU variant) ------------------------------------------------------------------

def meet_bigru_image(regions: torch.Tensor, img_enc: State, img_hcode: State) -> torch.Tensor:
    local = l2(lin(regions, img_enc, "fc"))  # EncoderImage
    p = "v_global"  # VisualSA(local, mean): its local BatchNorm has one channel per region
    l_emb = lin(local, img_hcode, f"{p}.embedding_local.0")
    l_emb = torch.tanh(bn(l_emb.T, img_hcode, f"{p}.embedding_local.1").T)
    g_emb = torch.tanh(bn(lin(local.mean(0), img_hcode, f"{p}.embedding_global.0"), img_hcode,
                          f"{p}.embedding_global.1"))
    weights = softmax0(lin(l_emb * g_emb, img_hcode, f"{p}.embedding_common.0").squeeze(-1))
    return l2((weights[:, None] * local).sum(0))


def meet_bigru_text(ids: list[int], txt_enc: State, txt_hcode: State, layers: int,
                    pad_to: int | None = None) -> torch.Tensor:
    """``pad_to``: the release's result inside a batch whose longest caption has that many
    tokens (zero states appended before ``Hash_EncoderText``'s mean and softmax)."""
    forward, backward = gru_directions(txt_enc["embed.weight"][torch.tensor(ids)], txt_enc, "rnn", layers)
    local = l2((forward + backward) / 2)
    if pad_to is not None:
        local = torch.cat([local, torch.zeros(pad_to - len(ids), local.shape[1])])
    p = "u_global"
    l_emb = torch.tanh(lin(local, txt_hcode, f"{p}.embedding_local.0"))
    g_emb = torch.tanh(lin(local.mean(0), txt_hcode, f"{p}.embedding_global.0"))
    weights = softmax0(lin(l_emb * g_emb, txt_hcode, f"{p}.embedding_common.0").squeeze(-1))
    return l2((weights[:, None] * local).sum(0))


# --- ESA ---------------------------------------------------------------------------------------

def dimension_pool(features: torch.Tensor, sd: State) -> torch.Tensor:
    return l2((softmax0(lin(features, sd, "linear1")) * features).sum(0))


def esa_image(regions: torch.Tensor, img_enc: State) -> torch.Tensor:
    return dimension_pool(lin(regions, img_enc, "fc") + mlp_bn(regions, img_enc, "mlp"), img_enc)


def esa_bert_text(ids: list[int], txt_enc: State, config: Any) -> torch.Tensor:
    return dimension_pool(lin(bert(ids, txt_enc, config), txt_enc, "linear"), txt_enc)


def esa_bigru_text(ids: list[int], txt_enc: State, layers: int) -> torch.Tensor:
    forward, backward = gru_directions(txt_enc["embed.weight"][torch.tensor(ids)], txt_enc, "rnn", layers)
    return dimension_pool((forward + backward) / 2, txt_enc)


# --- Stage I codes -----------------------------------------------------------------------------

def hash_features(own: torch.Tensor, proj: State) -> torch.Tensor:
    return torch.tanh(lin(own, proj, "0"))


def icm_codes(h: torch.Tensor, matrix: torch.Tensor, n_codebooks: int, codebook_size: int
              ) -> tuple[list[int], list[float]]:
    """``update_codes_ICM``: per sub-space the codeword of least squared error, and the gap to
    the second best (to skip exact ties)."""
    sub = h.shape[0] // n_codebooks
    codes, gaps = [], []
    for m in range(n_codebooks):
        words = matrix[m * codebook_size:(m + 1) * codebook_size, m * sub:(m + 1) * sub]
        errors = ((h[m * sub:(m + 1) * sub] - words) ** 2).sum(1)
        ordered = errors.sort().values
        codes.append(int(errors.argmin()))
        gaps.append(float(ordered[1] - ordered[0]))
    return codes, gaps
