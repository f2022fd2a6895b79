"""Column names that the tables of several stages share.

A leaf module (it imports nothing of nucseg): a stage that only reads these names, as the report
does, does not depend on the code that computes the columns, so an edit of the metrics does not
rerun the rules that merely collect or plot tables (their rerun triggers: :mod:`nucseg`).
"""

from __future__ import annotations

#: The identity columns that lead every per-image metrics table (:mod:`nucseg.evaluate`,
#: :mod:`nucseg.tasks.semantic`); the metric columns follow them.
ID_COLUMNS = ["model", "dataset", "image_id", "modality", "height", "width"]
