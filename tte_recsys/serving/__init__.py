"""Batch item embedding, FAISS export and the multi-head Retriever."""
