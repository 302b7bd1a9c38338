"""Sign-in through OpenID Connect identity providers (several at once), and their logout.

``service`` ties the steps together; ``provider`` talks to a provider (discovery, keys, tokens),
``flow`` keeps state/nonce/PKCE per browser, ``tokens`` verifies ID and logout tokens, ``links`` maps
a verified identity to an account, ``logout`` indexes provider sessions for back-channel logout.
"""
