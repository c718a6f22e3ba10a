"""The compliance reviewer console: a small web app over the audit log and the review queue."""
