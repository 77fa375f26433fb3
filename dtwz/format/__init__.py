"""Object formats, pure (docs/FORMAT.md): object IDs (``ids``), the layout of an
object's header, data and FOT (``layout``), persistent pointers (``pointers``),
typed views over an object's bytes (``views``) and the syntax of names
(``names``, docs/NAMES.md). Bytes in, frozen values out: no I/O, and every
decoder refuses what it does not understand. Everything above builds on these."""
