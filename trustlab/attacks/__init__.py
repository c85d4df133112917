"""trustlab.attacks"""
