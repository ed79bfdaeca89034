"""The model core: Batch Renormalization, the classifier, the preprocessing contract and the bundle.

Everything a trained model needs to run lives here; this package imports nothing from ``training``
or ``service``.
"""
