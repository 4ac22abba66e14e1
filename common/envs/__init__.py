"""Battle worlds that speak SMAC's StarCraft2Env API: the vectorised lite simulator and the SC2 adapter."""
