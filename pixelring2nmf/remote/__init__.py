"""Services at CERN: one HTTP layer (https only, no redirects), the OMS API, DIALS.

Credentials come from the environment only (the top-level `omsid` module for OMS; DIALS's
variables or cmsdials' own login cache), never from a file of the project.
"""
