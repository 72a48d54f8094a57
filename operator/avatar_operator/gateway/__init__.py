"""`avatar-operator gateway`: the endpoint `livekit-plugins-bithuman` and `inference.AvatarSession` call.

Each request names a tenant (a labelled Secret) and becomes an AvatarSession in
the tenant's namespace; the operator does the rest. See README.md (Gateway).
"""
