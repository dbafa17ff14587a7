"""Interaction/deep backbones: `call(embeddings [B, M, D], training=None) -> [B]` logit part.

The first-order (linear/wide) term is not part of a backbone; `CTRModel` adds it.
"""
