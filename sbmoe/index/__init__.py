"""FAISS indexes: one constructor for every index type, building from shards, the dense Retriever."""
