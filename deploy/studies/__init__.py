"""The studies: experiments made of many runs, on top of the composition root (`deploy/`).

- `sweep.py`: a reproduce sweep's model (budget, methods, seeds), the plan of its trials, each
  trial's configuration, and the trials' state on disk;
- `trials.py`: one trial of a sweep, and its process (`python -m deploy.studies.trials OUT NAME`);
- `pools.py`: where trials run (local processes, Ray tasks), one study per output directory;
- `runner.py`: the loop that runs a study's unfinished trials, with its progress line;
- `cli.py`: `ovmse reproduce`; `report.py`, `curves.py`: its results (`bootstrap.py`: the
  statistics; `marl_eval.py`: marl-eval's raw format);
- `seed_study.py`: the multi-seed study on the demo's data, a small sweep on the same machinery;
- `demo.py`: `ovmse demo`; `matrix_data.py`: the matrix-game datasets.
"""
