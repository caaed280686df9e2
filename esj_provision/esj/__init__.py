"""The ESJ option rules: the Genesys guide's rules for the nine protocol pairs, profiles of unconfirmed
literals, and cfg/json rendering. Never imports a Microsoft client: `emit` works offline and fast."""
