"""Delivering events to the world outside: a sender each (``senders``), fed by a delivery
loop in every serving process that goes on from where the sender was last told its events
were received (``delivery``). At least once, in position order, each event with its key."""
