-- Events written are no longer told on `loyalty_events` (0013's `events_written`): a
-- transaction that notifies takes, at commit, a lock that every other notifying commit of
-- the cluster waits on until it is done, its WAL flush included, and with points events on
-- that is every batch. The process that commits events wakes its own relay instead
-- (Store.on_events_written), and the relay numbers every process's events; numbering them
-- still notifies (`positioned`, one relay at a time).
DROP TRIGGER events_written ON events;
DROP FUNCTION notify_events_written();
