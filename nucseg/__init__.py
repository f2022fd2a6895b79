"""nucseg: nucleus instance segmentation, from a dataset archive to result tables.

Each stage of the Snakemake workflow calls one function of this package:

================  ==========================  ========================================
stage             module                      function
================  ==========================  ========================================
download          :mod:`nucseg.datasets`      :func:`~nucseg.datasets.download_dataset`
preprocess        :mod:`nucseg.preprocess`    :func:`~nucseg.preprocess.preprocess_training`,
                                              :func:`~nucseg.preprocess.preprocess_fullsize`
train             :mod:`nucseg.train`         :func:`~nucseg.train.train_model`
predict           :mod:`nucseg.infer`         :func:`~nucseg.infer.predict_dataset`
segment           :mod:`nucseg.postprocess`   :func:`~nucseg.postprocess.segment_dataset`
evaluate          :mod:`nucseg.evaluate`      :func:`~nucseg.evaluate.evaluate_dataset`
aggregate         :mod:`nucseg.report`        :func:`~nucseg.report.aggregate`
plots             :mod:`nucseg.plots`         :func:`~nucseg.plots.plot_results`
training_curves   :mod:`nucseg.plots`         :func:`~nucseg.plots.copy_training_curves`
qc                :mod:`nucseg.qc`            :func:`~nucseg.qc.qc_pictures`
================  ==========================  ========================================
"""

from __future__ import annotations

import hashlib
from importlib import resources

__version__ = "0.1.0"

#: The pretrained model folder shipped inside the package (weights.pt, config.json and
#: MODEL_CARD.md: what it was trained on, how, and how well it scores per modality).
#: ``nucseg segment`` uses it when no ``--model`` is given; a workflow model entry
#: ``{folder: pretrained}`` uses it instead of training one.
PRETRAINED_MODEL = str(resources.files(__name__) / "pretrained")


def code_hash(*modules: str) -> str:
    """Short hash of the source of the named ``nucseg`` modules.

    The workflow passes it to each rule as a ``param``, so that Snakemake reruns
    a stage when the code it calls changes, and only then.

    Parameters
    ----------
    *modules : str
        Module names inside the package, e.g. ``"postprocess"``.

    Returns
    -------
    str
        12 hexadecimal characters.
    """
    digest = hashlib.sha256(__version__.encode())
    package = resources.files(__name__)
    for name in sorted(set(modules)):
        source = package.joinpath(f"{name}.py")
        if not source.is_file():
            raise ValueError(f"nucseg has no module {name!r} (looked for {source})")
        digest.update(name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]
