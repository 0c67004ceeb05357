"""The jobs behind the `zoo` command line, one module per job.

A job is the work of one command: it takes plain arguments, fits and compares, writes its files into an
output folder and returns its results, so that it runs the same from the CLI, a notebook or a test. Each
has ``main(args)``, which the CLI (``zoo.cli``, parsing only) dispatches to:

    compare_gmm     `zoo compare gmm`: one mixture data set fitted by every inference method, compared
    fit_vae         `zoo fit vae|beta-vae`: train, evaluate and draw a (beta-)VAE, in one or several processes
    simulate_fep    `zoo simulate fep`: the free-energy-principle thermostat agent, and a sweep of variances
    benchmark       `zoo benchmark`: every inference method on every reference posterior of
                    ``zoo.posteriordb``, scored against the reference means and sds
"""
