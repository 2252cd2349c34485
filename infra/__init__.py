"""What every run stands on, whatever it trains or samples.

* ``devices``: the device mesh, shardings, moving batches on and results off the devices;
* ``distributed``: several processes without a cluster manager (coordinator, watchdogs);
* ``checkpoints``: orbax checkpoints: atomic, CRC-checked, never non-finite, corrupt-fallback;
* ``run_config``: the workdir's ``config.json`` and what may change on resume or in evaluation;
* ``outputs``: atomic files, JSON, npz, PNG grids and scatter images, TensorBoard;
* ``logs``: the console and the workdir's log file: formats, filters, progress bars and lines;
* ``registry``: name -> piece tables behind every choice a config makes by name.
"""
