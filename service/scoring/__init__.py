"""Batch scoring of ``.h5ad`` files of any size: streamed in chunks, resumable, optionally on Dask.

A run (:func:`service.scoring.job.run_scoring`) goes like this:

1. Before any work: the output path is checked, the model is loaded, and every input is opened, its
   genes aligned to the model's (:meth:`Predictor.align`) and its values checked on a sample of its first
   :data:`~service.scoring.inputs.SAMPLE_CELLS` cells (``--input auto`` detects the input kind there). Problems surface here with
   the same messages as the REST service, prefixed with the file's path.
2. Each input is cut into chunks of ``chunk_size`` cells (row ranges). A chunk is read straight from the
   HDF5 datasets in blocks of at most :data:`~service.scoring.blocks.BLOCK_ROWS` cells, every stored value is checked (a bad value
   anywhere is an error naming the cell), and the block is scored by :meth:`Predictor.annotate`. Blocks
   are processed side by side on one thread per core (:func:`~service.scoring.blocks.ordered_map`), each running torch on one
   intra-op thread. Memory therefore depends on the block size and the cores, never on the file size
   or the chunk size.
3. Each finished chunk's results are saved in a hidden work directory beside the output
   (``.OUT.partial/``) together with a small ``state.json`` identifying the run; ``--resume`` continues an
   interrupted run from the chunks found there, and refuses when the inputs, the model or the settings
   changed.
4. At the end the output is written inside the work directory and moved into place with one atomic
   rename, so a file at the output path is always complete.

With a Dask cluster (``workers`` or ``scheduler``) the chunks are scored by the workers: each worker
loads the model once (cached per worker process, keyed by the bundle's digest) and reads its row
ranges from the file itself; only paths, row ranges and the small results travel. Blocks never hold
fewer than :data:`~service.scoring.blocks.MIN_FORWARD_ROWS` rows in a forward pass (short blocks are padded with empty cells),
so a cell's scores are bit-for-bit the same whatever the chunk size, the block it falls in, or the
worker that scores it.

The modules follow those steps: :mod:`~service.scoring.job` (the run and its summary),
:mod:`~service.scoring.inputs` (opening and checking inputs), :mod:`~service.scoring.tasks` (chunks),
:mod:`~service.scoring.blocks` (scoring a chunk block by block), :mod:`~service.scoring.workdir` (the
locked work directory and ``--resume``), :mod:`~service.scoring.executors` (local threads or a Dask
cluster) and :mod:`~service.scoring.output` (assembling the output).
"""
