"""Shape checks shared by the backbones."""
from __future__ import annotations


def check_embedding_shape(owner: str, input_shape) -> tuple[int, int]:
    """[B, M, D] with known M and D -> (M, D)."""
    if len(input_shape) != 3 or input_shape[1] is None or input_shape[2] is None:
        raise ValueError(
            f"{owner}: expected embeddings of shape [batch, fields, dim] with known fields and "
            f"dim, got {tuple(input_shape)}"
        )
    return int(input_shape[1]), int(input_shape[2])
