"""The tools behind the ``loyalty`` commands: seeding, the offline evaluator, JSON records
and the demo. The server never imports them (a test holds it to that), except the demo
loaded by ``loyalty serve --demo`` at start-up."""
