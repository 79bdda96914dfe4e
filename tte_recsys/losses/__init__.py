"""Loss functions: pure functions of embeddings and labels."""
