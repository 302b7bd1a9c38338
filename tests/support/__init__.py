"""Test helpers shared by several suites: real protocol peers implemented in-process."""
