"""What the operator reads: status against the objectives, the HTML report, the metrics.

``status`` judges the newest good backup of each target against its RPO, the last drill
against the RTOs, and adds the lines of the full-system rehearsal (``rehearsal``), of the run
records (``runs``) and of the WAL archive (``pitr.status``); ``metrics`` writes the same
reading in Prometheus text format. ``gather`` collects what ``safehold report`` shows,
``page`` renders it as one self-contained HTML file, with its charts drawn by ``svg``.
"""
