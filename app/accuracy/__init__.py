"""How close the planner is to real runs: published peak-memory measurements (:mod:`.rows`, :mod:`.table`) and this
server's finished GPU calibrations (:mod:`.calibrations`). Served as GET /api/v1/accuracy and the /accuracy page;
printed by ``bench/published_check.py``. See docs/accuracy.md."""
