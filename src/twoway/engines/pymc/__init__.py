"""engines/pymc"""
