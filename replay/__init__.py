"""Replay: the Reverb server and its tables, the episode writer, the samplers, dataset files.

    tables.py          what the tables hold: the item layout, encoding and checking episodes
    server.py          the Reverb server: its two tables, checkpoints and restore, loading the
                       offline table once
    process.py         the replay-server process: serving, metrics, the checkpoint ledger
    writer.py          EpisodeWriter: one item per episode, flushed (actors)
    sampler.py         MixedSampler: exact offline/online mixing, padding, background prefetch (learner)
    local.py           LocalReplay: the in-process replay of one process (no Reverb), repeatable
    dataset.py         dataset files in CFCQL's HDF5 layout: read, validate, summarise
    dataset_error.py   DatasetError, the one error every dataset reader raises
    dataset_writer.py  DatasetWriter: HDF5 dataset files written whole, and where their cards go
    vault.py           Flashbax vaults (OG-MARL's datasets): VaultView reads, VaultWriter writes
    staging.py         StagedWriter: the writers' build under a temporary name, renamed when complete
    convert.py         HDF5 dataset file <-> Flashbax vault, checked on the way (`ovmse dataset convert`)

The commands (`ovmse replay-server`, `ovmse dataset ...`) are deploy/replay_commands.py.
Importing this package is cheap: Reverb (and with it TensorFlow) is imported only where needed.
"""
