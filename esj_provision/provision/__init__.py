"""Changing one tenant safely: preflight, the tri-state plan, the one write/read-back/resend loop,
verification, the change journal, the ESJ app's service principal and RBAC scope, PowerShell export."""
