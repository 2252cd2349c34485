"""Input pipelines: image data sets and 2-D toy distributions as host-side numpy batches.

The public face: :func:`get_dataset` turns ``config.data`` into :class:`batching.Batches`,
:func:`load_split` reads a whole split, :func:`num_examples` counts one; :func:`input_shape` and
:func:`is_vector_data` say what the model reads, and :func:`data_scalers` (or
:func:`get_data_scaler` / :func:`get_data_inverse_scaler`) map between the data's [0, 1] and the
model's range. The modules:

* ``sources``: ``config.data`` -> the source that reads it (registry), splits, scalers;
* ``lookup``: where data come from when ``config.data.data_dir`` is empty;
* ``readers``: numpy-only readers (IDX, CIFAR-10 python, npz, image folders), crop and resize;
* ``tf_readers``: TFDS and TFRecords, the only TensorFlow users;
* ``toy_data``: the 2-D toy distributions (registry);
* ``batching``: order, process sharding, augmentation, prefetching; the model's view of a batch.

What a batch is. Iterating a :class:`batching.Batches` yields dicts

* ``'image'``: float32 ``[local_B, H, W, C]`` with values in ``[0, 1]`` (images) or
  ``[local_B, 2]`` (toys, roughly unit scale). Images are NOT scaled to ``[-1, 1]``: the caller
  applies :func:`get_data_scaler`, as the authors did.
* ``'label'``: int32 ``[local_B]``, the class index, or -1 where the data set has no labels and on
  padding rows.
* ``'mask'``: float32 ``[local_B]``, 1 for real examples and 0 for padding rows (whose image is all
  zeros).

``local_B = batch_size // process_count`` where ``batch_size`` is the GLOBAL batch; the
process-local batches concatenated in process order are exactly the global batch. Training
streams (``train=True``) repeat forever, reshuffled every epoch, and yield full batches only;
evaluation passes (``train=False``) visit every example of the split exactly once, in stored
order, the last batch padded with ``mask = 0`` rows. ``batching`` states the exact order and the
randomness of flips and dequantization.
"""

from datasets.sources import (data_scalers, get_data_inverse_scaler, get_data_scaler, get_dataset,
                              input_shape, is_vector_data, load_split, num_examples)

__all__ = ["data_scalers", "get_data_inverse_scaler", "get_data_scaler", "get_dataset",
           "input_shape", "is_vector_data", "load_split", "num_examples"]
