"""Many mailboxes at once: the manifest, bulk onboarding and the audit, over the provision part."""
