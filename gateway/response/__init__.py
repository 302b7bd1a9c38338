"""Incident response: incidents as records through the five phases (detection and analysis,
containment, eradication, recovery, post-incident), their evidence, actions, checks and report."""
