"""The admin web UI (``dsguard web``): dashboard, quarantine review, scan uploads, JSON API.

It reads and writes the same store as the gateway, the policy server and the milter, and
releases mail through the gateway's spool (:mod:`dsguard.quarantine`).

SECURITY: the UI shows hostile mail to the people with the most power over the mail flow, so
every layer assumes the content is an attack:

- Sign-in only: every page and API call needs a session (:mod:`.middleware` denies by
  default; only ``/login``, ``POST /api/session`` and ``/static`` are public). Admin accounts
  are argon2id hashes in the store; sign-in attempts are throttled per client IP and per user
  name (:mod:`.throttle`).
- Sessions live server-side (:mod:`.sessions`): the cookie carries only a random id signed
  with the key in ``[web] session_secret_file``; HttpOnly, SameSite=Strict, Secure over
  HTTPS; idle and absolute expiry; signing out ends the session on the server.
- CSRF: every state change needs the session's token (form field or ``X-CSRF-Token``), and
  cross-site requests are refused by their ``Origin``/``Sec-Fetch-Site`` headers first.
- Output: Jinja2 autoescaping everywhere, indicators defanged and never links, HTML bodies
  sanitised with nh3 and shown in a sandboxed ``srcdoc`` iframe (:mod:`.body`); a strict
  Content-Security-Policy without scripts, framing forbidden, no referrer, no sniffing.
- Input: request bodies are capped before they are read; uploads are scanned by the same
  hardened loaders and engine as ``dsguard scan``.
"""
