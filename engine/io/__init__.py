"""Reading images: sources (folders, lists, Parquet, WebDataset, fsspec URLs), the PIL reference decoder,
the DALI decoder, and the preprocessing recipe."""
