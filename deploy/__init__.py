"""The composition root: the builder that makes every part from a config, the processes of a
distributed run, the one-process trainer, the orchestrators (embedded, compose, Ray), dataset
recipes and the `ovmse` command. Also the Dockerfiles, Prometheus/Grafana provisioning and Ray
cluster files."""
