"""`python -m common.kernels`: build the compiled library now (the Makefile's install does)."""

from common.kernels import prebuild

prebuild()
