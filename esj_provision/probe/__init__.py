"""``probe``: sign in as ESJ would and open the shared mailbox over the protocol ESJ will use.

* :mod:`.targets` reads the options file (cfg or json) into one target per section;
* :mod:`.signin` asks Entra ID for ESJ's token (client credentials, or the service account's password);
* :mod:`.wire` speaks IMAP, SMTP, EWS and Graph the way Exchange Online expects;
* :mod:`.checks` turns Microsoft's answers into ok / pending / failed / skipped, with reason and fix,
  and retries what is pending (``--wait``).

Uses only the credentials/http parts and the ESJ option rules; what Exchange holds (grants, RBAC) is
read through a :class:`.checks.GrantReader` the caller hands in, so the probe never builds an
Exchange request itself.
"""
