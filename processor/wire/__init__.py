"""The wire: loyalty.v1 messages in (admission) and out (answers)."""
