"""BLIP's vision tower and text decoder run with SDPA over the checkpoint's own weights, for a fast caption loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _linear(x, module):
    return F.linear(x, module.weight, module.bias)


def _norm(x, module):
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def encode_images(vision, pixel_values: torch.Tensor) -> torch.Tensor:
    """The vision tower's last hidden state [B, S, D], as BlipVisionModel computes it, with SDPA attention."""
    hidden = vision.embeddings(pixel_values)
    batch, tokens, width = hidden.shape
    for layer in vision.encoder.layers:
        attention = layer.self_attn
        qkv = _linear(_norm(hidden, layer.layer_norm1), attention.qkv)
        qkv = qkv.view(batch, tokens, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=attention.scale)
        hidden = _linear(mixed.transpose(1, 2).reshape(batch, tokens, width), attention.projection) + hidden
        hidden = layer.mlp(_norm(hidden, layer.layer_norm2)) + hidden
    return _norm(hidden, vision.post_layernorm)


class TextDecoder:
    """BlipTextLMHeadModel's decoder as prefill + one-token steps over a preallocated self-attention cache.

    The self-attention cache holds keys and values as kv[2 * layer + (0 | 1)], each [rows, heads, length, head_dim].
    Cross-attention keys and values are computed once per image, image_kv[2 * layer + (0 | 1)] of shape
    [images, heads, S, head_dim], and every beam of an image reads them: its beams ride along the query axis, so
    nothing is repeated per beam.
    """

    def __init__(self, text_decoder):
        bert = text_decoder.bert
        self.embeddings = bert.embeddings
        self.layers = list(bert.encoder.layer)
        self.head = text_decoder.cls.predictions
        first = self.layers[0].attention.self
        self.heads = first.num_attention_heads
        self.head_dim = first.attention_head_size
        self.width = first.all_head_size
        self.max_positions = self.embeddings.position_embeddings.num_embeddings

    def cross_kv(self, image_embeds: torch.Tensor, out: torch.Tensor) -> None:
        """Write every layer's cross-attention keys and values for these images into out[:, :images]."""
        images, tokens, _ = image_embeds.shape
        for index, layer in enumerate(self.layers):
            cross = layer.crossattention.self
            for part, projection in enumerate((cross.key, cross.value)):
                projected = _linear(image_embeds, projection).view(images, tokens, self.heads, self.head_dim)
                out[2 * index + part, :images].copy_(projected.transpose(1, 2))

    def prefill(self, tokens: torch.Tensor, image_kv: torch.Tensor, kv: torch.Tensor, beams: int) -> torch.Tensor:
        """Run the prompt [B, P] (causal), store its keys/values for every beam row, return last-token logits [B, V]."""
        images, length = tokens.shape
        positions = torch.arange(length, device=tokens.device)
        hidden = self._embed(tokens, positions)
        for index, layer in enumerate(self.layers):
            attention = layer.attention.self
            query = self._heads(_linear(hidden, attention.query))
            key = self._heads(_linear(hidden, attention.key))
            value = self._heads(_linear(hidden, attention.value))
            for part, states in enumerate((key, value)):
                kv[2 * index + part, : images * beams, :, :length].copy_(states.repeat_interleave(beams, dim=0))
            mixed = F.scaled_dot_product_attention(query, key, value, is_causal=True)
            hidden = self._after_self(layer, mixed.transpose(1, 2).reshape(images, length, self.width), hidden)
            cross = layer.crossattention.self
            query = self._heads(_linear(hidden, cross.query))
            mixed = F.scaled_dot_product_attention(query, image_kv[2 * index, :images], image_kv[2 * index + 1, :images])
            hidden = self._after_cross(layer, mixed.transpose(1, 2).reshape(images, length, self.width), hidden)
        return self._logits(hidden[:, -1])

    def step(self, tokens: torch.Tensor, position: torch.Tensor, image_kv: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [N] at position (a 1-element tensor); N = images * beams. Returns logits [N, V].

        Only device tensors steer it (no Python ints that change per step), so a CUDA graph can capture it: the
        new key/value is written at `position` and attention masks out every cache slot after it.
        """
        rows = tokens.shape[0]
        images = image_kv.shape[1]
        beams = rows // images
        hidden = self._embed(tokens, position)
        visible = (torch.arange(kv.shape[3], device=tokens.device) <= position).view(1, 1, 1, -1)
        for index, layer in enumerate(self.layers):
            attention = layer.attention.self
            query = _linear(hidden, attention.query).view(rows, self.heads, 1, self.head_dim)
            keys, values = kv[2 * index, :rows], kv[2 * index + 1, :rows]
            keys.index_copy_(2, position, _linear(hidden, attention.key).view(rows, self.heads, 1, self.head_dim))
            values.index_copy_(2, position, _linear(hidden, attention.value).view(rows, self.heads, 1, self.head_dim))
            mixed = F.scaled_dot_product_attention(query, keys, values, attn_mask=visible)
            hidden = self._after_self(layer, mixed.transpose(1, 2).reshape(rows, self.width), hidden)
            cross = layer.crossattention.self
            query = _linear(hidden, cross.query).view(images, beams, self.heads, self.head_dim).transpose(1, 2)
            mixed = F.scaled_dot_product_attention(query, image_kv[2 * index], image_kv[2 * index + 1])
            hidden = self._after_cross(layer, mixed.transpose(1, 2).reshape(rows, self.width), hidden)
        return self._logits(hidden)

    def _heads(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        embeddings = self.embeddings
        words = F.embedding(tokens, embeddings.word_embeddings.weight)
        hidden = words + F.embedding(positions, embeddings.position_embeddings.weight)
        return _norm(hidden, embeddings.LayerNorm)

    def _after_self(self, layer, mixed, hidden):
        output = layer.attention.output
        return _norm(_linear(mixed, output.dense) + hidden, output.LayerNorm)

    def _after_cross(self, layer, mixed, hidden):
        output = layer.crossattention.output
        hidden = _norm(_linear(mixed, output.dense) + hidden, output.LayerNorm)
        inner = layer.intermediate.intermediate_act_fn(_linear(hidden, layer.intermediate.dense))
        return _norm(_linear(inner, layer.output.dense) + hidden, layer.output.LayerNorm)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        transform = self.head.transform
        hidden = _norm(transform.transform_act_fn(_linear(hidden, transform.dense)), transform.LayerNorm)
        return _linear(hidden, self.head.decoder).float()
