"""SMTP gateway: the aiosmtpd front door, the durable spool and the downstream relay."""
