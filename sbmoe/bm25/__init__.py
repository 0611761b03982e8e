"""BM25 (Lucene through pyserini, bm25s as fallback) and fusion of runs into hybrids."""
