"""Reliability tools (issue 22): crash at any moment, floods, noisy neighbours, soak."""
