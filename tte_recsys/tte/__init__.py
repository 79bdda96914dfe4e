"""Think-Then-Embed content tower: model loading, pooling, the embedder and item text."""
