"""Sample-quality metrics for image generators: FID, sFID, Inception Score, precision/recall, KID.

One PyTorch implementation of what researchers otherwise collect from pytorch-fid,
torch-fidelity and the TensorFlow ADM evaluator, reproducing pytorch-fid's FID exactly
(same network, weights and preprocessing). Library entry point::

    from sitcli.evaluate import FidConfig, evaluate
    result = evaluate(FidConfig("ref_images/", "samples.npz", metrics="fid,is,pr"))
    result.metrics["fid"]

Modules: ``inception`` (the network and its weights), ``inputs`` (folders and .npz files),
``statistics`` (streamed mean/covariance, Inception Score), ``metrics`` (the formulas),
``suite`` (``evaluate``, which ties them together).
"""

from sitcli.evaluate.suite import METRICS, FidConfig, FidResult, evaluate, parse_metrics

__all__ = ["METRICS", "FidConfig", "FidResult", "evaluate", "parse_metrics"]
