"""Domain experts with retrieval routing: query-side LoRA adapters on one frozen base encoder (documents keep the
base model's embeddings, so one index serves every expert), and a routed model that sends each query to one
expert (RouterRetriever's pilot embeddings, a learned gate, a domain classifier, per-test-set routing) or averages
them."""
