"""diffdebias: remove dataset bias from image classifiers with diffusion models.

    import diffdebias
    cfg = diffdebias.load_config("configs/cmnist/erm.yaml", ["classifier.epochs=5"])
    result = diffdebias.run(cfg, out="runs/notebook")
    result.metrics["test"]["unbiased_accuracy"], result.model()
"""

__version__ = "0.1.0"


def load_config(path=None, overrides=(), **top):
    """See :func:`diffdebias.api.load_config` (imported on first use, so ``import diffdebias`` stays light)."""
    from .api import load_config as load

    return load(path, overrides, **top)


def run(config, out=None, quiet=False, stage_cache=None):
    """See :func:`diffdebias.api.run`."""
    from .api import run as run_config

    return run_config(config, out, quiet=quiet, stage_cache=stage_cache)
