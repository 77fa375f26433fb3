"""The node-to-node wire protocol, pure (no I/O): ``kinds`` (the enumerations in
its integer fields), ``messages`` (one frozen dataclass per message) and
``codec`` (messages to frames and back). ``dtwz.node.peer`` moves the frames;
docs/PROTOCOL.md describes them byte for byte."""
