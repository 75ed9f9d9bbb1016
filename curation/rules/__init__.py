"""Pure rules a reviewer checks against the paper: plain functions over plain values, tested directly."""
