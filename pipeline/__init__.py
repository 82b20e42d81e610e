"""rvc-index: build RVC-ready faiss retrieval indices from HuBERT feature collections."""

__version__ = "0.1.0"
