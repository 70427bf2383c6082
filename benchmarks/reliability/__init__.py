"""`python -m benchmarks.reliability`: the fault and abuse report (see __main__)."""
