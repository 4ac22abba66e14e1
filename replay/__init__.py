"""Replay: the Reverb server and its tables, the episode writer, the mixed sampler, dataset files.

    server.py    tables, item layout, checkpoints and restore, loading the offline table once
    writer.py    EpisodeWriter: one item per episode, flushed (actors)
    sampler.py   MixedSampler: exact offline/online mixing, padding, background prefetch (learner)
    dataset.py   HDF5 files in CFCQL's layout: read, write, validate, inspect, collect
    commands.py  `ovmse replay-server` and `ovmse dataset ...`

Importing this package is cheap: Reverb (and with it TensorFlow) is imported only where needed.
"""
