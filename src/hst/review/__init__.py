"""``hst review``: a local web page where a person accepts or rejects the labels a checkpoint suggests.

``session`` holds the suggestions, the person's decisions, the decision log and the reviewed manifest;
``loop`` learns from the decisions round by round in the background and ranks the open questions;
``app`` is the web application (Flask) and its server (waitress) on 127.0.0.1.
"""
