"""Input limits shared by the decoders and the command line (no heavy imports: the CLI reads them at start)."""

# Images above this many pixels are failures, never decoded: a 100 MP RGB image is 300 MB decoded, and
# PIL's own bomb guard only warns up to 179 MP (and fails at twice that). 0 disables the limit.
DEFAULT_MAX_PIXELS = 100_000_000
