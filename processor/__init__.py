"""A loyalty and stored-value transaction processor.

The sub-packages follow the path of one transaction:

- ``service``: the gRPC servicers, the guard around every call (request id, metrics, error
  mapping), and ``service.server``, the gRPC server of one process (start, graceful stop);
- ``wire``: ``wire.admission`` checks each request message and makes the engine's request
  of it; ``wire.answers`` makes Result messages of the engine's results;
- ``flow``: ``flow.batcher`` gathers requests from every connection into batches,
  ``flow.pipeline`` takes a batch from replay check to commit and cache refresh,
  ``flow.registry`` knows the active program of each card prefix;
- ``engine``: the deterministic rule engine, a pure function from (compiled program,
  account state, request) to (postings, awards, level moves, tender decisions, trace), in a
  readable reference and a compiled twin (``processor._engine``, from ``ext/``);
- ``cache``: the Redis account cache (``cache.accounts``) and its compression dictionary;
- ``store``: PostgreSQL, the system of record: migrations, ledger and accounts, state
  codec, and the catalog's program files, cards and customers;
- ``program``: the program model, loaded from YAML or JSON and validated.

Around them: ``runtime`` (settings, logs, metrics, embedded servers, ``loyalty serve``),
``tools`` (seeding, the offline evaluator, JSON records, the demo: never imported by the
serving path, which tests/test_layout.py checks), ``cli`` (the ``loyalty`` command), and the
basics every layer uses: ``errors``, ``calendar``, ``money``, ``cards``, ``proto``, and
``limits``, every limit of the contract and the store, defined once.
"""

__version__ = "0.1.0"
