"""PGFlow's realtime gateway: HTTP routes, the live page, and ``/realtime`` websockets fed by one
LISTEN connection. ``gateway.app.create_app`` builds it; ``pgflow serve`` runs it."""
