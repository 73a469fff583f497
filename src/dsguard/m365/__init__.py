"""Microsoft 365 toolkit: inventory Direct Send traffic from Exchange Online / Defender exports
and plan the switch to ``RejectDirectSend`` (connectors, PowerShell, dsguard config, KQL).

- :mod:`.formats` detects and streams the exports into :class:`.records.TraceRecord` values;
- :mod:`.inventory` groups Direct Send traffic into sources, classifies them and says what
  ``RejectDirectSend`` would block;
- :mod:`.report` renders the inventory (text, JSON, CSV, HTML with a chart);
- :mod:`.plan` turns an inventory into ``enable-rejectdirectsend.ps1``, ``dsguard.toml`` and
  ``hunting.kql``.
"""
