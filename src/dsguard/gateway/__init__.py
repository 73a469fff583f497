"""SMTP gateway: dsguard's own SMTP server protocol, the durable spool and the downstream
relay."""
