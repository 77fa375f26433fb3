"""The local object store: the objects one node holds, in a folder (docs/FORMAT.md).

``store`` (``Store``: open, commit with a redo log and group commit, checkpoint
and recovery), ``transaction`` (``Transaction``, the only way to change objects),
``objects`` (``StoredObject``: one object mapped shared, zero-copy reads and
pointer dereference), ``mapping`` (object files mapped without a descriptor
each), ``redo`` (the redo record format), ``locks`` (object locks that hold
across threads and processes) and ``copies`` (``CopyCache``: read-only copies of
objects homed elsewhere). It knows nothing of other nodes."""
