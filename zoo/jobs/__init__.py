"""The jobs behind the `zoo` command line, one module per job.

A job is the work of one command: it takes plain arguments, fits and compares, writes its files into an
output folder and returns its results, so that it runs the same from the CLI, a notebook or a test.
This package is to become the one home of the CLI's jobs; for now it holds only the benchmark:

    benchmark    `zoo benchmark`: every inference method on every reference posterior of
                 ``zoo.posteriordb``, scored against the reference means and sds
"""
