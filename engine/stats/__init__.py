"""Activation statistics: reducers, bin ranges, distances, VDNA objects and files, profiling and scoring."""
