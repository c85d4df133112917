"""trustlab.dashboard"""
