"""Learning: TD(lambda) targets, CQL/CFCQL/Cal-QL/OVM losses, the update step, checkpoints, weight service."""
