"""Triggers: Pub/Sub messages (job requests, Cloud Storage notifications) become jobs.

``messages`` reads a message, ``handler`` records (and launches) the job or rejects the message,
``pull`` is the streaming-pull listener, ``push`` the HTTP endpoint for push subscriptions
(Cloud Run), ``oidc`` verifies the tokens Pub/Sub signs for push requests.
"""
