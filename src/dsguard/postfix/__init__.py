"""Postfix front doors: the policy delegation server and the milter."""
