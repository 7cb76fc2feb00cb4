"""Names and defaults of the duplicate search, importable without torch (the CLI builds its parser from
them before anything heavy is imported)."""

METHODS = ("phash", "dhash", "embedding", "both")
KEEP_POLICIES = ("largest", "first", "centre")
# kept: each image joins the first kept image (in keep-policy order) it is paired with, else is kept (no
# chaining); components: connected components of all pairs, one image kept per component.
GROUPINGS = ("kept", "components")
# Hamming bits: imagededup's default for its hashes; about 1 in 6 of a 64-bit hash.
DEFAULT_MAX_DISTANCE = 10
# Cosine similarity of pooled embeddings. Meaningful for pretrained weights; random-init features are
# similar for almost every pair (see bench/bench_dedup.py), so set it from a benchmark of your data.
DEFAULT_THRESHOLD = 0.95
