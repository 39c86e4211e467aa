# TEMPORARY shim while runoff/train.py is being edited elsewhere; replaced by the real module.
from ..train import *  # noqa: F401,F403
from ..train import _TrainingSet as prepare_training_set  # noqa: F401
from ..train import chunk_logits, chunk_steps, resolve_device, train_chunk, run_chunks, check_chunk_size  # noqa: F401
