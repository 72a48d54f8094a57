"""`avatar-operator view`: a page on 127.0.0.1 that watches a session's avatar.

The CLI's server reads sessions with the user's kubeconfig, mints
subscribe-only viewer tokens (build/viewer_token.py) and serves the page
bundled from web/ (`make viewer`). The LiveKit API secret stays in this
process: the page receives only a token. The operator's `run` never imports
this package.
"""
