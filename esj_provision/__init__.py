"""esj-provision: connect Genesys E-mail Server (ESJ) to Exchange Online shared mailboxes."""

__version__ = "0.1.0"
