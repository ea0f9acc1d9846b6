"""Networks: backbones, label embeddings, and the multi-label recognition models built on them."""
