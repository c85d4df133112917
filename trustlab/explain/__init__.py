"""trustlab.explain"""
