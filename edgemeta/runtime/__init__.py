"""The board runtime: interpreter backends, preprocessing and the prototype store.

Never imports TensorFlow unless it is the only interpreter available (or forced).
"""

from edgemeta.runtime.backends import (
    BACKEND_ENV,
    BACKENDS,
    LoadedInterpreter,
    available_backends,
    load_interpreter,
)
from edgemeta.runtime.classifier import FewShotClassifier
from edgemeta.runtime.health import HealthReport, health_check, self_test_deviation
from edgemeta.runtime.embedder import Embedder, input_details, invoke_batch, output_details, set_batch_size
from edgemeta.runtime.preprocess import (
    ImageLike,
    load_image,
    preprocess,
    preprocess_batch,
    quantize_input,
    shifted_views,
    to_uint8_image,
)
from edgemeta.runtime.prototypes import (
    Prediction,
    PrototypeStore,
    classify_embeddings,
    compute_prototypes,
    l2_normalize,
    pairwise_distances,
)

__all__ = [
    "BACKEND_ENV",
    "BACKENDS",
    "Embedder",
    "FewShotClassifier",
    "HealthReport",
    "health_check",
    "l2_normalize",
    "self_test_deviation",
    "ImageLike",
    "LoadedInterpreter",
    "Prediction",
    "PrototypeStore",
    "available_backends",
    "classify_embeddings",
    "compute_prototypes",
    "input_details",
    "invoke_batch",
    "load_image",
    "load_interpreter",
    "output_details",
    "pairwise_distances",
    "preprocess",
    "preprocess_batch",
    "quantize_input",
    "set_batch_size",
    "shifted_views",
]
