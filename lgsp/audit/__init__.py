"""The audit trail: the writer, seals and witness, verification, search, export and syslog forwarding."""
