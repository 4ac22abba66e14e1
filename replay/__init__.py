"""Replay: the Reverb server and its tables, the episode writer, the mixed sampler, dataset files."""
