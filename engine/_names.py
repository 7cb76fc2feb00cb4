"""Names the library and the command line share, importable without torch (the CLI's parsers use them)."""

FUNGI_OBJECTIVES = ("kl", "dino", "simclr")  # neuroprint.fungi.build.OBJECTIVES
FUNGI_MODES = ("compat", "fixed")  # neuroprint.fungi.MODES

# neuroprint check: histogram bins of the per-image pool, pool size, duplicate thresholds (Hamming bits of
# a 64-bit hash; embedding cosine at or above which two images are near-duplicates)
CHECK_DEFAULT_BINS = 64
CHECK_DEFAULT_POOL = 512
CHECK_DEFAULT_DUP_DISTANCE = 4
CHECK_DEFAULT_DUP_COSINE = 0.95
