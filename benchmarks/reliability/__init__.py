"""Reliability and security suite: what celltype survives, measured on real processes over loopback.

Each scenario is a function returning what it tried and what held, as numbers; ``tests/reliability``
runs the same functions with small sizes (fast, in CI), and ``python -m benchmarks.reliability`` runs the
long versions and writes ``docs/reliability.md``::

    python -m benchmarks.reliability [--quick] [--write] [--workdir DIR] [--fuzz-examples N]

Scenarios:

- Fuzzing: the service's OpenAPI schema drives schemathesis (valid and invalid inputs); every
  answer must be below 500 and conform to the schema (status code, content type, body, headers), and
  protected routes must refuse requests without credentials.
- Load: N clients hammer a real ``celltype serve`` for a fixed time; errors, p50/p99 latency,
  throughput and the server's RSS before and after.
- Faults: ``celltype train`` SIGKILLed after its first checkpoint then ``--resume``d (same weights as
  an uninterrupted run); the MLflow server, or the PostgreSQL connection behind it, down while training
  (exit code 3, bundle kept, ``celltype register`` works later); the registry down during
  ``/v1/admin/reload`` (the old model keeps serving); ``celltype score`` SIGKILLed mid-way (no output
  that looks complete, ``--resume`` gives identical bytes); SIGTERM to the service with requests in
  flight (they finish).
- Hostile input: a pickle payload in the registry next to a valid bundle (never executed by our
  loader, executed by ``mlflow.pyfunc.load_model`` as the control), tampered weights, path traversal
  in model URIs and upload file names, oversized streamed bodies (413 early, RSS flat), and API keys
  (401, timing of near misses).
- Malformed files (issue 13): Hypothesis generates broken and degenerate h5ad/npz/CSR-JSON bodies (every
  structural CSR fault, lying shapes, gzip bombs, odd dtypes and names) for the in-process app and
  ``celltype score`` (no 5xx, no traceback, no crash, accepted files answer as their clean equivalent);
  ``--fuzz-examples N`` sets how many.
- A worker killed mid-request (issue 13): SIGKILL to a ``celltype serve --workers 2`` worker answering a
  request; every later request is answered and the supervisor replaces the worker.

Every loop is bounded in time and count, every server listens on 127.0.0.1 only, and every process
started here is stopped by its process group id.

Modules: :mod:`~benchmarks.reliability.harness` (processes, ports, the live service),
:mod:`~benchmarks.reliability.stores` (PostgreSQL, ``mlflow server``, a cuttable TCP proxy),
:mod:`~benchmarks.reliability.inputs` (random bundles, request bodies, data),
:mod:`~benchmarks.reliability.outcome` (what a scenario returns), one module per scenario group
(``fuzz``, ``load``, ``training_faults``, ``scoring_faults``, ``service_faults``, ``reload_faults``,
``hostile_registry``, ``hostile_http``, ``file_fuzz``, ``worker_crash``), :mod:`~benchmarks.reliability.suite` (all of them in order) and
:mod:`~benchmarks.reliability.report` (``docs/reliability.md``).
"""
