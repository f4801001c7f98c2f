"""The FAISS index kinds `evoked index --kind` builds (see `evoked.features.index_build`).

A module of its own so that the CLI lists them without loading faiss.
"""

from evoked.registry import Registry

INDEX_KINDS: Registry[None] = Registry("index kind")
for _name, _help in (
    ("auto", "exact up to 200,000 rows, then the first of ivf, ivffp16, ivfsq8, ivfpq within the budget"),
    ("flat", "exact search (inner product), 4 bytes per dimension"),
    ("ivf", "inverted lists of full vectors, searched with the nprobe that reaches the recall goal"),
    ("hnsw", "graph search (HNSW, M=32), no training; more memory than flat"),
    ("ivffp16", "inverted lists of float16 vectors: half the memory of ivf"),
    ("ivfsq8", "inverted lists of 8-bit scalar-quantised vectors: a quarter of ivf"),
    ("ivfpq", "inverted lists of product-quantised codes: the smallest, the least exact"),
):
    INDEX_KINDS.add(_name, None, help=_help)
