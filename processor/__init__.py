"""A loyalty and stored-value transaction processor.

The package is organised along the path of one transaction:

- ``processor.program``: the program model (cards, tender, award and loyalty
  programs), loaded from YAML or JSON and validated;
- ``processor.engine``: the deterministic rule engine, a pure function from
  (compiled program, account state, request) to (postings, awards, level moves,
  tender decisions, trace);
- ``processor.evaluate``: the offline evaluator behind ``loyalty evaluate``.
"""

__version__ = "0.1.0"
