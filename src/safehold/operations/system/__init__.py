"""The application as a whole: its database and volumes as one set, restored as one runbook.

``backup`` takes a set (one id, a bounded pool, the set record written last); ``plan`` says
what a whole-system restore will do, step by numbered step, before anything is stopped;
``restore`` runs it -- stop the containers, restore every member, migrate, start, wait for
health -- timing each step against the recovery objectives, journalled so a killed run says
where it stopped; ``steps`` holds the steps that are not restores (verifying every member at
once, the health wait).
"""
