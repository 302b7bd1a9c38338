"""Personal data and the people it is about: rights requests, consent, retention and legal holds."""
