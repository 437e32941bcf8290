"""Reading what users give as files or frames.

* :mod:`twoway.table.io.tables`: long tables (CSV text, pandas DataFrames) and wide
  arrays, parsed into the fields of a :class:`~twoway.table.data.TwoWayData`;
* :mod:`twoway.table.io.matrices`: labelled square matrices in CSV files (known
  relationship matrices, full covariances of a table).

Nothing here imports pandas until a frame is actually read.
"""
