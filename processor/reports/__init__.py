"""What program managers read, from the figures the scorecards job keeps
(processor.jobs.scorecards): scorecard.py puts them in order with the manual's ratios, as
tables and JSON (GetScorecard and ``loyalty report scorecard``); page.py draws them as one
self-contained HTML page with charts (``--html``)."""
