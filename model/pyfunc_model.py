"""Models-from-code entry point of the celltype pyfunc (see :mod:`model.pyfunc`).

MLflow runs this file when it logs or loads the model; it only names the model class, so the logged
artifact holds source code and the safetensors bundle, never a pickle.
"""

import mlflow

from model.pyfunc import CellTypePythonModel

mlflow.models.set_model(CellTypePythonModel())
